#!/bin/sh
# Run once by the postgres image on a fresh data volume (/docker-entrypoint-initdb.d), as
# the superuser: creates the role the umarvel services log in as, with DATABASE_PASSWORD,
# and makes it the owner of the database POSTGRES_DB (on PostgreSQL 15 and later the owner
# may create tables in its public schema). The superuser's password stays in this
# container.
set -e
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v password="$DATABASE_PASSWORD" -v database="$POSTGRES_DB" <<'SQL'
CREATE ROLE umarvel LOGIN PASSWORD :'password';
ALTER DATABASE :"database" OWNER TO umarvel;
SQL
