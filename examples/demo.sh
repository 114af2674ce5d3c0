#!/usr/bin/env bash
# The main job on an example: compute fs-verity digests with pyverity and check them against
# the real `fsverity digest`. Run from the repository root after `pip install -e .`.
set -euo pipefail
PYVERITY=${PYVERITY:-.venv/bin/pyverity}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf 'hello world\n' > "$work/hello"
head -c 3000000 /dev/urandom > "$work/random"
for f in "$work/hello" "$work/random"; do
    ours=$("$PYVERITY" digest "$f")
    theirs=$(fsverity digest "$f")
    echo "pyverity: $ours"
    [ "$ours" = "$theirs" ] || { echo "MISMATCH with fsverity: $theirs" >&2; exit 1; }
done
echo "demo: pyverity digests equal fsverity's"
