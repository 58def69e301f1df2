//! The syscall filter every payload runs under. The payload already runs as an
//! unprivileged user with no capabilities, so most of these calls would fail anyway: the
//! filter is the second wall, which keeps kernel attack surface (bpf, io_uring, perf,
//! keyrings, namespace creation, new mount API) out of reach even if the first one falls.
//!
//! Two filters are stacked: a small hand-written guard (wrong architecture, x32 syscall
//! numbers, clone3 whose flags cannot be inspected) and a seccompiler-built deny list.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SeccompError {
    #[error("this architecture ({0}) has no seccomp filter")]
    UnsupportedArch(&'static str),
    #[error("building the seccomp filter")]
    Build(#[source] seccompiler::BackendError),
}

/// Syscalls a sandbox never needs; they fail with EPERM.
/// (Syscall numbers are `c_long`, which is i64 on the 64-bit targets faas supports.)
const DENIED: &[i64] = &[
    // Filesystem and mount namespace manipulation.
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_quotactl,
    libc::SYS_acct,
    // The kernel itself.
    libc::SYS_reboot,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_syslog,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ioperm,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_uselib,
    // Other processes.
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_kcmp,
    // Keyrings are not namespaced.
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    // Namespaces and host identity.
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_sethostname,
    libc::SYS_setdomainname,
    // Clocks are not namespaced.
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_fanotify_init,
    libc::SYS_vhangup,
];

/// clone() flags that would create namespaces.
const CLONE_NAMESPACE_FLAGS: [i32; 7] = [
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWCGROUP,
];

/// The compiled filters, built once in the launcher and installed in every payload.
#[derive(Debug, Clone)]
pub struct Filters {
    guard: BpfProgram,
    deny: BpfProgram,
}

impl Filters {
    pub fn build() -> Result<Self, SeccompError> {
        let arch = TargetArch::try_from(std::env::consts::ARCH)
            .map_err(|_| SeccompError::UnsupportedArch(std::env::consts::ARCH))?;
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
            DENIED.iter().map(|nr| (*nr, Vec::new())).collect();
        // clone with any namespace flag; the rules of one syscall are OR-ed.
        let clone_rules = CLONE_NAMESPACE_FLAGS
            .iter()
            .map(|flag| {
                let flag = *flag as u64;
                SeccompCondition::new(
                    0,
                    SeccompCmpArgLen::Qword,
                    SeccompCmpOp::MaskedEq(flag),
                    flag,
                )
                .and_then(|c| SeccompRule::new(vec![c]))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(SeccompError::Build)?;
        rules.insert(libc::SYS_clone, clone_rules);
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM as u32),
            arch,
        )
        .map_err(SeccompError::Build)?;
        let deny: BpfProgram = filter.try_into().map_err(SeccompError::Build)?;
        Ok(Self { guard: guard_program()?, deny })
    }

    /// Installs both filters on the calling thread (sets no_new_privs first).
    /// Called in the payload just before exec.
    pub fn install(&self) -> Result<(), seccompiler::Error> {
        seccompiler::apply_filter(&self.guard)?;
        seccompiler::apply_filter(&self.deny)
    }
}

const BPF_LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const BPF_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const BPF_JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
/// Offsets in `struct seccomp_data`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// Kills a foreign-architecture call, refuses x32 syscall numbers (which would slip past
/// a deny list keyed on x86_64 numbers) and answers clone3 with ENOSYS, so that libc falls
/// back to clone(), whose flags the deny list can inspect.
fn guard_program() -> Result<BpfProgram, SeccompError> {
    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH: u32 = 62 | 0x8000_0000 | 0x4000_0000;
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH: u32 = 183 | 0x8000_0000 | 0x4000_0000;
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    return Err(SeccompError::UnsupportedArch(std::env::consts::ARCH));

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        const X32_SYSCALL_BIT: u32 = 0x4000_0000;
        Ok(vec![
            insn(BPF_LD_W_ABS, 0, 0, DATA_ARCH),
            insn(BPF_JEQ_K, 1, 0, AUDIT_ARCH),
            insn(BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
            insn(BPF_LD_W_ABS, 0, 0, DATA_NR),
            insn(BPF_JGE_K, 0, 1, X32_SYSCALL_BIT),
            insn(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | libc::EPERM as u32),
            insn(BPF_JEQ_K, 0, 1, libc::SYS_clone3 as u32),
            insn(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
            insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_build() {
        let filters = Filters::build().expect("filters build on this architecture");
        assert!(!filters.deny.is_empty());
        assert_eq!(filters.guard.len(), 9);
    }
}
