#!/usr/bin/env python3
"""Checks flake.lock against flake.nix without Nix or network.

Nix re-locks (and so needs the network) when a lock node's `original` differs from the input URL
in flake.nix, and cannot fetch an input whose `locked` entry lacks rev or narHash. This script
checks both, plus the `follows` entries, for the `github:` inputs this flake uses.

Usage: python3 nix/check-lock.py [REPO_ROOT]    (exit status 0 when consistent)
"""

import json
import re
import sys
from pathlib import Path

LOCKED_FIELDS = ("lastModified", "narHash", "owner", "repo", "rev", "type")


def strip_comments(text):
    """flake.nix without `#` comments (none of our strings contains a `#`)."""
    return re.sub(r"#[^\n]*", "", text)


def braced(text, start):
    """The text between the `{` at `start` and its matching `}`."""
    depth = 0
    for index in range(start, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : index]
    raise ValueError("unbalanced braces in flake.nix")


def flake_inputs(text):
    """Returns {input: {"url": str, "follows": {child: target}}} from flake.nix's `inputs`."""
    text = strip_comments(text)
    block = re.search(r"\binputs\s*=\s*\{", text)
    if not block:
        raise ValueError("flake.nix has no `inputs = { ... };`")
    body = braced(text, block.end() - 1)
    item = re.compile(r'\s*([\w-]+)\s*(?:\.\s*url\s*=\s*"([^"]+)"\s*;|=\s*(\{))')
    inputs = {}
    position = 0
    # Each item at depth 1 of `inputs`: `name.url = "...";` or `name = { ... };`.
    while match := item.match(body, position):
        name, url, _brace = match.groups()
        entry = inputs.setdefault(name, {"follows": {}})
        if url is not None:
            entry["url"] = url
            position = match.end()
            continue
        inner = braced(body, match.start(3))
        found = re.search(r'\burl\s*=\s*"([^"]+)"', inner)
        if found:
            entry["url"] = found.group(1)
        for child, target in re.findall(r'inputs\.([\w-]+)\.follows\s*=\s*"([^"]+)"', inner):
            entry["follows"][child] = target
        position = body.index(";", match.start(3) + len(inner) + 2) + 1
    if body[position:].strip():
        raise ValueError(f"cannot read flake.nix inputs from: {body[position:].strip()[:60]!r}")
    return inputs


def github_original(url):
    """`github:owner/repo[/ref]` as the `original` attribute set Nix writes."""
    match = re.fullmatch(r"github:([^/]+)/([^/?]+)(?:/([^?]+))?", url)
    if not match:
        raise ValueError(f"not a github: URL this check understands: {url}")
    owner, repo, ref = match.groups()
    original = {"owner": owner, "repo": repo, "type": "github"}
    if ref:
        key = "rev" if re.fullmatch(r"[0-9a-f]{40}", ref) else "ref"
        original[key] = ref
    return original


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    inputs = flake_inputs((root / "flake.nix").read_text())
    lock = json.loads((root / "flake.lock").read_text())
    nodes = lock["nodes"]
    errors = []

    if lock.get("version") != 7:
        errors.append(f"lock version {lock.get('version')} (Nix 2.8 to 2.3x write 7)")
    root_inputs = nodes[lock["root"]].get("inputs", {})
    if set(root_inputs) != set(inputs):
        errors.append(f"root inputs {sorted(root_inputs)} != flake.nix inputs {sorted(inputs)}")

    for name, spec in sorted(inputs.items()):
        node = nodes.get(root_inputs.get(name, ""), None)
        if node is None:
            errors.append(f"{name}: no lock node")
            continue
        want = github_original(spec["url"])
        if node.get("original") != want:
            errors.append(f"{name}: original {node.get('original')} != {want} (from {spec['url']})")
        locked = node.get("locked", {})
        missing = [field for field in LOCKED_FIELDS if field not in locked]
        if missing:
            errors.append(f"{name}: locked lacks {missing}")
        if not re.fullmatch(r"[0-9a-f]{40}", locked.get("rev", "")):
            errors.append(f"{name}: locked.rev is not a full commit hash")
        if not re.fullmatch(r"sha256-[A-Za-z0-9+/]{43}=", locked.get("narHash", "")):
            errors.append(f"{name}: locked.narHash is not an SRI sha256")
        for key in ("owner", "repo", "type"):
            if locked.get(key) != want[key]:
                errors.append(f"{name}: locked.{key} {locked.get(key)!r} != {want[key]!r}")
        for child, target in spec["follows"].items():
            got = node.get("inputs", {}).get(child)
            if got != target.split("/"):
                errors.append(f"{name}: inputs.{child} is {got}, flake.nix follows {target!r}")

    for error in errors:
        print(f"flake.lock: {error}", file=sys.stderr)
    if not errors:
        print(f"flake.lock matches flake.nix ({', '.join(sorted(inputs))})")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
