"""Media: where uploaded files live (a folder or S3), and the rules an image must pass."""
