#!/usr/bin/env bash
# Print the path of uv, installing it from PyPI first when it is missing.
set -euo pipefail
if command -v uv >/dev/null 2>&1; then command -v uv; exit 0; fi
for candidate in "$HOME/.local/bin/uv" "$HOME/.cargo/bin/uv"; do
  if [ -x "$candidate" ]; then echo "$candidate"; exit 0; fi
done
echo "uv not found; installing it with pip (user site)..." >&2
python3 -m pip install --user --quiet uv >&2 2>/dev/null \
  || python3 -m pip install --user --quiet --break-system-packages uv >&2
if command -v uv >/dev/null 2>&1; then command -v uv; exit 0; fi
user_bin="$(python3 -m site --user-base)/bin/uv"
if [ -x "$user_bin" ]; then echo "$user_bin"; exit 0; fi
echo "could not install uv; see https://docs.astral.sh/uv/ and run 'make' again" >&2
exit 1
