"""Per-kernel SASS of two built extensions, compared: the check that a change only moved code.

  python tools/sass_diff.py [--opcodes] OLD/lmKAN/_C*.so NEW/lmKAN/_C*.so

Kernels are matched by architecture and demangled name with the project's namespaces dropped
(lmkan::, lmkan2d::, lmkan1d::, regularizers::, anonymous namespaces), so a kernel that moved
between files or namespaces still meets its old self. Prints the count of identical kernels
and every kernel that differs or exists on one side only; exit status 1 if any does. Needs
cuobjdump (see list_elf.py) and c++filt.

--opcodes: match kernels without their parameter lists and compare opcode sequences only
(operands dropped): the check for a change of a kernel's parameters into one argument struct,
which moves the parameters' constant-bank offsets and nothing else.
"""
import collections
import re
import subprocess
import sys

from list_elf import cuobjdump

NAMESPACES = re.compile(r"(lmkan::|lmkan1d::|lmkan2d::|regularizers::|\(anonymous namespace\)::)")


def kernels(path):
    """{(architecture, kernel name without namespaces): tuple of SASS lines}."""
    sass = subprocess.run([cuobjdump(), "-sass", path], capture_output=True, text=True,
                          check=True).stdout
    code, arch, current = collections.defaultdict(list), None, None
    for line in sass.splitlines():
        if m := re.match(r"\s*arch = (sm_\d+a?)", line):
            arch = m.group(1)
        elif m := re.match(r"\s*Function : (\S+)", line):
            current = (arch, m.group(1))
        elif current and re.match(r"\s*/\*[0-9a-f]{4}\*/", line):
            code[current].append(" ".join(line.split()))
    mangled = sorted({name for _, name in code})
    demangled = subprocess.run(["c++filt"], input="\n".join(mangled), capture_output=True,
                               text=True, check=True).stdout.splitlines()
    plain = {m: NAMESPACES.sub("", d) for m, d in zip(mangled, demangled)}
    return {(a, plain[name]): tuple(lines) for (a, name), lines in code.items()}


def without_parameters(name):
    """The demangled name without its final parenthesised parameter list."""
    depth = 0
    for i in range(len(name) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(name[i], 0)
        if depth == 0 and name[i] == "(":
            return name[:i]
    return name


def opcodes(lines):
    """The opcodes (with modifiers, predicates dropped) of SASS lines "/*0010*/ OP ... ;"."""
    ops = []
    for line in lines:
        tokens = line.split()[1:]
        if tokens and tokens[0].startswith("@"):
            tokens = tokens[1:]
        if tokens:
            ops.append(tokens[0].rstrip(";"))
    return tuple(ops)


def main(old_path, new_path, opcodes_only=False):
    old, new = kernels(old_path), kernels(new_path)
    if opcodes_only:
        old = {(a, without_parameters(n)): opcodes(c) for (a, n), c in old.items()}
        new = {(a, without_parameters(n)): opcodes(c) for (a, n), c in new.items()}
    same = [k for k in old if new.get(k) == old[k]]
    differ = [k for k in old if k in new and new[k] != old[k]]
    print(f"kernels: {len(old)} old, {len(new)} new; identical SASS: {len(same)}")
    for arch, name in differ:
        print(f"  differs ({arch}): {name} ({len(old[(arch, name)])} -> {len(new[(arch, name)])} "
              "instructions)")
    for arch, name in sorted(set(old) - set(new)):
        print(f"  only in old ({arch}): {name}")
    for arch, name in sorted(set(new) - set(old)):
        print(f"  only in new ({arch}): {name}")
    return 0 if len(same) == len(old) == len(new) else 1


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--opcodes"]
    if len(args) != 2:
        sys.exit(__doc__)
    sys.exit(main(*args, opcodes_only="--opcodes" in sys.argv[1:]))
