"""Names of the files a release folder holds, and the release format version: defined once, used everywhere.

docs/FORMAT.md describes each file. The loader files are copied verbatim from `packager/runtime/`.
"""

from __future__ import annotations

#: The release format this version of unswift writes (config.json["unswift"]["format_version"]).
FORMAT_VERSION = 1

CONFIG = "config.json"
#: The release record: how the release was made and what was measured.
RECORD = "unswift.json"
#: The model card, rendered from the record.
CARD = "README.md"
#: The OpenSSF model-signing signature, written last over every other file.
SIGNATURE = "model.sig"
GENERATION_CONFIG = "generation_config.json"
SHARD_INDEX = "model.safetensors.index.json"
#: The loader: copied into every release, read by transformers through `auto_map`.
RUNTIME_FILES = ("configuration_unswift.py", "modeling_unswift.py")
#: Files every release folder has; without them a folder is not a release.
REQUIRED = (RECORD, CONFIG)
#: Files the record's payload list leaves out: the card, the record itself, the signature.
NOT_PAYLOAD = (CARD, RECORD, SIGNATURE)
#: The publisher's hardening secret sits beside (never inside) the release folder as `<folder>.secret`.
SECRET_SUFFIX = ".secret"
#: What `model_signing sign key DIR --signature DIR/model.sig` leaves out (recorded in every signature);
#: the record's payload list and the push leave the same paths out.
UNSIGNED = (SIGNATURE, ".git", ".github", ".gitattributes", ".gitignore")
