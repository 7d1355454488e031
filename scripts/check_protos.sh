#!/usr/bin/env bash
# `make lint`'s proto checks: `buf lint` (buf.yaml's rules and listed exceptions) and `buf breaking`
# against the contract as it was before the change being checked.
#
# What "before" is, with the full history (CI clones all of it):
# - on a branch off main: where it left main (the merge-base), so every commit of the branch counts,
#   not only its last one;
# - on main itself (or a commit main contains): the commit's first parent, i.e. main before it.
# Uncommitted edits are always included: buf reads the working tree. BUF_AGAINST=<git ref> overrides
# the choice; BUF=<path> picks the binary (default: tools/node_modules/.bin/buf, from `make buf-deps`).
set -euo pipefail
cd "$(dirname "$0")/.."
buf=${BUF:-tools/node_modules/.bin/buf}
if [ ! -x "$buf" ]; then
    echo "check_protos: $buf not found; run \`make buf-deps\` (npm installs the pinned buf)" >&2
    exit 2
fi

"$buf" lint

against=${BUF_AGAINST:-}
if [ -z "$against" ]; then
    main=""
    for candidate in main origin/main; do
        if git rev-parse --verify --quiet "$candidate^{commit}" >/dev/null; then
            main=$candidate
            break
        fi
    done
    if [ -n "$main" ] && ! git merge-base --is-ancestor HEAD "$main"; then
        against=$(git merge-base HEAD "$main")
    elif git rev-parse --verify --quiet "HEAD~1^{commit}" >/dev/null; then
        against=$(git rev-parse HEAD~1)
    else
        echo "check_protos: no previous commit to compare the contract with (a shallow clone?);" \
            "run \`git fetch --unshallow\` or set BUF_AGAINST=<git ref>" >&2
        exit 2
    fi
fi
against=$(git rev-parse --verify "$against^{commit}")
echo "buf breaking against $(git log -1 --format='%h %s' "$against")"
"$buf" breaking --against ".git#ref=$against"
