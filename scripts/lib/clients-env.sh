# Sourced by the scripts that drive embedserve with real clients from PyPI (test-clients,
# test-scaleout): makes .venv from tests/clients/requirements.txt when it is missing or out of
# date, makes LangChain's tiktoken work offline, builds the debug server and exports
# EMBEDSERVE_BIN. Sets `venv`.
venv="$PWD/.venv"
requirements="tests/clients/requirements.txt"

if [ ! -x "$venv/bin/python" ] || ! cmp -s "$requirements" "$venv/requirements.txt"; then
  echo "installing $requirements into .venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/requirements.txt"
fi

# tiktoken downloads cl100k_base on first use, which fails offline. The tiktoken-rs crate
# ships the same file: put it where tiktoken's cache looks (the sha1 of its download URL).
crate_dir="$(cargo metadata --locked --format-version 1 | "$venv/bin/python" -c '
import json, sys, os
meta = json.load(sys.stdin)
print(next(os.path.dirname(p["manifest_path"]) for p in meta["packages"] if p["name"] == "tiktoken-rs"))')"
export TIKTOKEN_CACHE_DIR="$PWD/target/tiktoken-cache"
mkdir -p "$TIKTOKEN_CACHE_DIR"
cp "$crate_dir/assets/cl100k_base.tiktoken" "$TIKTOKEN_CACHE_DIR/9b5ad71b2ce5302211f9c61530b329a4922fc6a4"

scripts/fetch-onnxruntime
echo "building embedserve" >&2
cargo build --locked
export EMBEDSERVE_BIN="$PWD/target/debug/embedserve"
