"""Per-kernel SASS of two built extensions, compared: the check that a change only moved code.

  python tools/sass_diff.py OLD/lmKAN/_C*.so NEW/lmKAN/_C*.so

Kernels are matched by architecture and demangled name with the project's namespaces dropped
(lmkan::, lmkan2d::, lmkan1d::, regularizers::, anonymous namespaces), so a kernel that moved
between files or namespaces still meets its old self. Prints the count of identical kernels
and every kernel that differs or exists on one side only; exit status 1 if any does. Needs
cuobjdump (see list_elf.py) and c++filt.
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


def main(old_path, new_path):
    old, new = kernels(old_path), kernels(new_path)
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
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
