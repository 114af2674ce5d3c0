"""The kernel's built-in policies (``ima_policy=``, spec/ima.md §3.6) as policy text.

``Policy.builtin("tcb")`` (or several names joined by ``|`` or spaces, as the boot parameter
takes them) gives the same rules the kernel would load. The build-option variants follow the
kernel's defaults: ``appraise_tcb`` includes the ``POLICY_CHECK`` rule
(``CONFIG_IMA_WRITE_POLICY``) and not the signed-init flavour.
"""

from __future__ import annotations

from pyverity.errors import PolicyError

__all__ = ["BUILTIN", "builtin_text"]

# Pseudo filesystems the kernel never measures or appraises (their statfs magics).
_PSEUDO = {
    "proc": 0x9FA0,
    "sysfs": 0x62656572,
    "debugfs": 0x64626720,
    "tmpfs": 0x01021994,
    "devpts": 0x1CD1,
    "binfmt_misc": 0x42494E4D,
    "securityfs": 0x73636673,
    "selinuxfs": 0xF97CFF8C,
    "smackfs": 0x43415D53,
    "cgroup": 0x27E0EB,
    "cgroup2": 0x63677270,
    "nsfs": 0x6E736673,
    "efivarfs": 0xDE5E81E4,
}
_RAMFS = 0x858458F6


def _dont(action: str, magics: list[int]) -> str:
    return "".join(f"{action} fsmagic=0x{m:x}\n" for m in magics)


BUILTIN: dict[str, str] = {
    "tcb": _dont("dont_measure", list(_PSEUDO.values())) + "measure func=MMAP_CHECK mask=MAY_EXEC\n"
    "measure func=BPRM_CHECK mask=MAY_EXEC\n"
    "measure func=FILE_CHECK mask=^MAY_READ euid=0\n"
    "measure func=FILE_CHECK mask=^MAY_READ uid=0\n"
    "measure func=MODULE_CHECK\n"
    "measure func=FIRMWARE_CHECK\n"
    "measure func=POLICY_CHECK\n",
    "appraise_tcb": _dont("dont_appraise", [*_PSEUDO.values(), _RAMFS])
    + "appraise func=POLICY_CHECK appraise_type=imasig\n"
    "appraise fowner=0\n",
    "secure_boot": "appraise func=MODULE_CHECK appraise_type=imasig\n"
    "appraise func=FIRMWARE_CHECK appraise_type=imasig\n"
    "appraise func=KEXEC_KERNEL_CHECK appraise_type=imasig\n"
    "appraise func=POLICY_CHECK appraise_type=imasig\n",
    "critical_data": "measure func=CRITICAL_DATA\n",
}


def builtin_text(names: str) -> str:
    """The rules of the named built-in policies, in the order given."""
    parts = [n for n in names.replace("|", " ").split() if n]
    unknown = [n for n in parts if n not in BUILTIN]
    if unknown or not parts:
        raise PolicyError(
            f"unknown built-in policy {' '.join(unknown) or '(none)'}",
            remedy="use " + ", ".join(BUILTIN),
        )
    return "".join(BUILTIN[n] for n in parts)
