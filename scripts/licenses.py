"""The license of every runtime distribution, read from its installed metadata, and whether
an Apache-2.0 project may depend on it. docs/licenses.md explains the rules; this prints its
table:

    python scripts/licenses.py           # the table of docs/licenses.md
    python scripts/licenses.py --write   # write it into docs/licenses.md

A distribution's license is read, in this order: its ``License-Expression`` (an SPDX
expression) alone; else its ``License`` field when that is a known name or an SPDX
expression, together with its ``License ::`` classifiers (all of them must be allowed: a
package whose field says Apache but whose classifier says proprietary needs a review).
Free text in ``License`` (a whole license, a copyright line) is left for the classifiers.
"""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "docs" / "licenses.md"

PERMISSIVE = frozenset(
    {
        "MIT",
        "MIT-CMU",
        "BSD",  # a classifier or field that names no clause count: every BSD variant is fine
        "BSD-2-Clause",
        "BSD-3-Clause",
        "0BSD",
        "ISC",
        "Apache-2.0",
        "Apache-2.0 WITH LLVM-exception",
        "PSF-2.0",
        "Python-2.0",
        "CNRI-Python",
        "Zlib",
        "BSL-1.0",
        "CC0-1.0",
        "HPND",
    }
)
# File-level (MPL) or library-level (LGPL) copyleft: no condition on the code that imports
# the library unmodified, as a separate, replaceable distribution.
WEAK_COPYLEFT = frozenset(
    {
        "MPL-2.0",
        "LGPL-2.1-only",
        "LGPL-2.1-or-later",
        "LGPL-3.0-only",
        "LGPL-3.0-or-later",
    }
)
ALLOWED = PERMISSIVE | WEAK_COPYLEFT

# Reviewed by hand, not allowed by the rules: NVIDIA's CUDA libraries, which the CUDA build
# of torch (the worker extra) requires on Linux. docs/licenses.md says why; a new one fails
# the test until it is reviewed and named here.
REVIEWED = {
    name: "NVIDIA proprietary (CUDA libraries of torch's build)"
    for name in (
        "cuda-toolkit",
        "nvidia-cublas",
        "nvidia-cuda-cupti",
        "nvidia-cuda-nvrtc",
        "nvidia-cuda-runtime",
        "nvidia-cudnn-cu13",
        "nvidia-cufft",
        "nvidia-cufile",
        "nvidia-curand",
        "nvidia-cusolver",
        "nvidia-cusparse",
        "nvidia-cusparselt-cu13",
        "nvidia-nccl-cu13",
        "nvidia-nvjitlink",
        "nvidia-nvshmem-cu13",
        "nvidia-nvtx",
    )
}

# License fields and classifiers as packages write them, by SPDX identifier.
NAMES = {
    "apache": "Apache-2.0",
    "apache 2.0": "Apache-2.0",
    "apache-2.0": "Apache-2.0",
    "apache license 2.0": "Apache-2.0",
    "apache 2.0 license": "Apache-2.0",
    "apache software license": "Apache-2.0",
    "mit": "MIT",
    "mit license": "MIT",
    "bsd": "BSD",
    "bsd license": "BSD",
    "new bsd": "BSD-3-Clause",
    "bsd-3-clause": "BSD-3-Clause",
    "3-clause bsd license": "BSD-3-Clause",
    "bsd 3-clause license": "BSD-3-Clause",
    "isc license": "ISC",
    "isc license (iscl)": "ISC",
    "python software foundation license": "PSF-2.0",
    "mozilla public license 2.0 (mpl 2.0)": "MPL-2.0",
    "mpl-2.0": "MPL-2.0",
    "other/proprietary license": "LicenseRef-Proprietary",
    "nvidia proprietary software": "LicenseRef-NVIDIA-Proprietary",
    "licenseref-nvidia-proprietary": "LicenseRef-NVIDIA-Proprietary",
}
SPDX_ID = re.compile(r"^[A-Za-z0-9.+-]+$")


def _constraints() -> ModuleType:
    spec = importlib.util.spec_from_file_location("constraints", HERE / "constraints.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def allowed(expression: str) -> bool:
    """Whether an SPDX expression is allowed: every term of an AND, one of an OR."""
    tokens = re.findall(r"\(|\)|[^\s()]+", expression)
    position = 0

    def peek() -> str | None:
        return tokens[position] if position < len(tokens) else None

    def take() -> str:
        nonlocal position
        if position >= len(tokens):
            raise ValueError(f"incomplete license expression: {expression!r}")
        position += 1
        return tokens[position - 1]

    def factor() -> bool:
        token = take()
        if token == "(":
            value = either()
            if take() != ")":
                raise ValueError(f"unbalanced license expression: {expression!r}")
            return value
        if peek() == "WITH":
            take()
            return f"{token} WITH {take()}" in ALLOWED
        return token in ALLOWED

    def both() -> bool:
        value = factor()
        while peek() == "AND":
            take()
            value = factor() and value
        return value

    def either() -> bool:
        value = both()
        while peek() == "OR":
            take()
            value = both() or value
        return value

    value = either()
    if peek() is not None:
        raise ValueError(f"unexpected {peek()!r} in license expression: {expression!r}")
    return value


def _as_expression(text: str) -> str | None:
    """A License field as an SPDX expression: a known name, or an expression of SPDX ids."""
    text = text.strip()
    if not text or "\n" in text:
        return None
    if text.lower() in NAMES:
        return NAMES[text.lower()]
    words = re.findall(r"\(|\)|[^\s()]+", text)
    ids = [w for w in words if w not in ("(", ")", "AND", "OR", "WITH")]
    if ids and all(SPDX_ID.match(w) and (w in ALLOWED or "-" in w) for w in ids):
        return text
    return None


@dataclass(frozen=True)
class License:
    name: str
    expression: str  # what was read, as SPDX ("unknown" when nothing could be)
    source: str  # License-Expression, License, classifiers

    @property
    def verdict(self) -> str:
        if self.name in REVIEWED:
            return "reviewed"
        try:
            if self.expression != "unknown" and all(
                allowed(part) for part in self.expression.split(" ; ")
            ):
                return "yes"
        except ValueError:  # not an expression after all: read it by hand
            pass
        return "no"


def _field(meta: metadata.PackageMetadata, key: str) -> str | None:
    values = meta.get_all(key) or []
    return str(values[0]) if values else None


def license_of(distribution: metadata.Distribution) -> License:
    meta = distribution.metadata
    name = re.sub(r"[-_.]+", "-", meta["Name"]).lower()
    expression = _field(meta, "License-Expression")
    if expression:
        return License(name, expression.strip(), "License-Expression")
    found: list[str] = []
    sources = []
    field = _as_expression(_field(meta, "License") or "")
    if field:
        found.append(field)
        sources.append("License")
    for classifier in meta.get_all("Classifier") or []:
        if classifier.startswith("License ::"):
            text = classifier.split(" :: ")[-1]
            unnamed = "LicenseRef-" + re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")
            found.append(NAMES.get(text.lower(), unnamed))
            sources.append("classifiers")
    unique = list(dict.fromkeys(found))
    if not unique:
        return License(name, "unknown", "none")
    # Several indications must all be allowed: joined with " ; " and checked one by one.
    return License(name, " ; ".join(unique), ", ".join(dict.fromkeys(sources)))


def runtime_licenses() -> list[License]:
    constraints = _constraints()
    return sorted(
        (
            license_of(distribution)
            for name, distribution in constraints.runtime_distributions().items()
            if name not in constraints.OWN
        ),
        key=lambda found: found.name,
    )


VERDICTS = {
    "yes": "yes",
    "reviewed": "not open source: see [NVIDIA's libraries](#nvidias-libraries)",
    "no": "**no**",
}


def table() -> str:
    rows = [
        "| distribution | license (from its metadata) | read from | compatible |",
        "|---|---|---|---|",
    ]
    for found in runtime_licenses():
        expression = found.expression.replace(" ; ", "; ")
        verdict = VERDICTS[found.verdict]
        if found.verdict == "yes" and any(
            w in WEAK_COPYLEFT for w in re.findall(r"[^\s();]+", found.expression)
        ):
            verdict = "yes, as a dependency (weak copyleft)"
        rows.append(f"| `{found.name}` | {expression} | {found.source} | {verdict} |")
    return "\n".join(rows) + "\n"


START, END = "<!-- table: python scripts/licenses.py --write -->\n", "<!-- /table -->\n"


def main(argv: list[str]) -> int:
    text = table()
    if argv == ["--write"]:
        doc = DOC.read_text()
        before, _, rest = doc.partition(START)
        _, _, after = rest.partition(END)
        DOC.write_text(before + START + text + END + after)
    elif not argv:
        sys.stdout.write(text)
    else:
        sys.stderr.write(__doc__ or "")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
