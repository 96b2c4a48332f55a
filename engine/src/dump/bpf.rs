//! A classic-BPF interpreter for seccomp filters, so that the engine can
//! tell, before it injects a syscall into a filtered task, what the task's
//! filters will answer. A filter that would kill the task, send it SIGSYS,
//! fail the call or hand it to a tracer or listener makes the dump refuse
//! by name instead of harming the source.

/// `struct seccomp_data`: nr, arch, instruction_pointer, args[6].
pub(crate) fn seccomp_data(nr: i64, ip: u64, args: &[u64; 6]) -> [u8; 64] {
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    let mut d = [0u8; 64];
    d[0..4].copy_from_slice(&(nr as i32).to_le_bytes());
    d[4..8].copy_from_slice(&AUDIT_ARCH_X86_64.to_le_bytes());
    d[8..16].copy_from_slice(&ip.to_le_bytes());
    for (i, a) in args.iter().enumerate() {
        d[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
    }
    d
}

/// Runs one program (8-byte `struct sock_filter`s) on `data`; returns the
/// 32-bit action value it returns.
pub(crate) fn run(insns: &[u8], data: &[u8; 64]) -> Result<u32, String> {
    let prog: Vec<(u16, u8, u8, u32)> = insns
        .chunks_exact(8)
        .map(|i| {
            (
                u16::from_le_bytes([i[0], i[1]]),
                i[2],
                i[3],
                u32::from_le_bytes([i[4], i[5], i[6], i[7]]),
            )
        })
        .collect();
    let (mut a, mut x) = (0u32, 0u32);
    let mut mem = [0u32; 16];
    let mut pc = 0usize;
    let word = |k: u32| -> Result<u32, String> {
        let k = k as usize;
        if !k.is_multiple_of(4) || k + 4 > data.len() {
            return Err(format!("load at offset {k}"));
        }
        Ok(u32::from_le_bytes([
            data[k],
            data[k + 1],
            data[k + 2],
            data[k + 3],
        ]))
    };
    let slot = |k: u32| -> Result<usize, String> {
        (k < 16)
            .then_some(k as usize)
            .ok_or_else(|| format!("scratch slot {k}"))
    };
    // Every step moves forward, so this ends within prog.len() steps.
    loop {
        let &(code, jt, jf, k) = prog
            .get(pc)
            .ok_or_else(|| format!("runs off its end at {pc}"))?;
        pc += 1;
        let src = if code & 0x08 != 0 { x } else { k };
        match code & 0x07 {
            // LD
            0x00 => match code & 0xe0 {
                0x00 => a = k,
                0x20 if code & 0x18 == 0 => a = word(k)?,
                0x60 => a = mem[slot(k)?],
                0x80 => a = data.len() as u32,
                _ => return Err(format!("unknown load {code:#x}")),
            },
            // LDX
            0x01 => match code & 0xe0 {
                0x00 => x = k,
                0x60 => x = mem[slot(k)?],
                0x80 => x = data.len() as u32,
                _ => return Err(format!("unknown load {code:#x}")),
            },
            0x02 => mem[slot(k)?] = a,
            0x03 => mem[slot(k)?] = x,
            // ALU
            0x04 => {
                a = match code & 0xf0 {
                    0x00 => a.wrapping_add(src),
                    0x10 => a.wrapping_sub(src),
                    0x20 => a.wrapping_mul(src),
                    0x30 | 0x90 if src == 0 => return Ok(0),
                    0x30 => a / src,
                    0x90 => a % src,
                    0x40 => a | src,
                    0x50 => a & src,
                    0x60 => a.checked_shl(src).unwrap_or(0),
                    0x70 => a.checked_shr(src).unwrap_or(0),
                    0x80 => a.wrapping_neg(),
                    0xa0 => a ^ src,
                    _ => return Err(format!("unknown alu {code:#x}")),
                }
            }
            // JMP
            0x05 => {
                let taken = match code & 0xf0 {
                    0x00 => {
                        pc += k as usize;
                        continue;
                    }
                    0x10 => a == src,
                    0x20 => a > src,
                    0x30 => a >= src,
                    0x40 => a & src != 0,
                    _ => return Err(format!("unknown jump {code:#x}")),
                };
                pc += usize::from(if taken { jt } else { jf });
            }
            // RET
            0x06 => {
                return match code & 0x18 {
                    0x00 => Ok(k),
                    0x10 => Ok(a),
                    _ => Err(format!("unknown return {code:#x}")),
                }
            }
            // MISC
            _ => match code & 0xf8 {
                0x00 => x = a,
                0x80 => a = x,
                _ => return Err(format!("unknown misc {code:#x}")),
            },
        }
    }
}

const ACTION_FULL: u32 = 0xffff_0000;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_LOG: u32 = 0x7ffc_0000;

/// What the stack of filters (oldest first) answers a call, as the kernel
/// combines them: the lowest action (as a signed value) wins, the most
/// recent filter among equals. `Ok(None)`: the call runs.
pub(crate) fn verdict(filters: &[Vec<u8>], data: &[u8; 64]) -> Result<Option<String>, String> {
    let mut best: Option<(usize, u32)> = None;
    for (i, f) in filters.iter().enumerate().rev() {
        let r = run(f, data).map_err(|e| format!("seccomp filter {i}: {e}"))?;
        let act = |v: u32| (v & ACTION_FULL) as i32;
        if best.is_none_or(|(_, b)| act(r) < act(b)) {
            best = Some((i, r));
        }
    }
    let Some((i, r)) = best else {
        return Ok(None);
    };
    let what = match r & ACTION_FULL {
        RET_ALLOW | RET_LOG => return Ok(None),
        0x8000_0000 => "kill the process".to_string(),
        0x0000_0000 => "kill the thread".to_string(),
        0x0003_0000 => "send SIGSYS".to_string(),
        0x0005_0000 => format!("fail it with errno {}", r & 0xffff),
        0x7fc0_0000 => "notify a listener".to_string(),
        0x7ff0_0000 => "hand it to a tracer".to_string(),
        other => format!("return action {other:#x}"),
    };
    Ok(Some(format!("seccomp filter {i} would {what}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ins(code: u16, jt: u8, jf: u8, k: u32) -> Vec<u8> {
        let mut v = code.to_le_bytes().to_vec();
        v.extend_from_slice(&[jt, jf]);
        v.extend_from_slice(&k.to_le_bytes());
        v
    }

    /// nr == `nr` -> `ret`, else allow.
    fn rule(nr: u32, ret: u32) -> Vec<u8> {
        [
            ins(0x20, 0, 0, 0),
            ins(0x15, 0, 1, nr),
            ins(0x06, 0, 0, ret),
            ins(0x06, 0, 0, RET_ALLOW),
        ]
        .concat()
    }

    #[test]
    fn evaluates_rules_and_combines_filters() {
        let d = |nr| seccomp_data(nr, 0x1000, &[0; 6]);
        let errno = rule(39, 0x0005_0000 | 7);
        assert_eq!(run(&errno, &d(39)), Ok(0x0005_0007));
        assert_eq!(run(&errno, &d(40)), Ok(RET_ALLOW));
        let kill = rule(39, 0x8000_0000);
        let newer_errno = rule(39, 0x0005_0000 | 9);
        // Kill (lowest) wins over errno whatever the order.
        let v = verdict(&[errno.clone(), kill.clone()], &d(39)).unwrap();
        assert!(v.unwrap().contains("kill the process"));
        // Among equal actions the newest filter's data counts.
        let v = verdict(&[errno, newer_errno], &d(39)).unwrap();
        assert!(v.unwrap().contains("errno 9"), "newest errno wins");
        assert_eq!(verdict(&[kill], &d(1)), Ok(None));
        assert_eq!(verdict(&[], &d(1)), Ok(None));
    }

    #[test]
    fn args_alu_and_scratch() {
        // A = args[0] low word; A &= 0xff; M[3] = A; X = 5; A = M[3];
        // A == 5 (X) -> errno 1, else allow.
        let p = [
            ins(0x20, 0, 0, 16),
            ins(0x54, 0, 0, 0xff),
            ins(0x02, 0, 0, 3),
            ins(0x01, 0, 0, 5),
            ins(0x60, 0, 0, 3),
            ins(0x1d, 0, 1, 0),
            ins(0x06, 0, 0, 0x0005_0001),
            ins(0x06, 0, 0, RET_ALLOW),
        ]
        .concat();
        assert_eq!(
            run(&p, &seccomp_data(0, 0, &[0x105, 0, 0, 0, 0, 0])),
            Ok(0x0005_0001)
        );
        assert_eq!(
            run(&p, &seccomp_data(0, 0, &[0x106, 0, 0, 0, 0, 0])),
            Ok(RET_ALLOW)
        );
        // Out-of-range loads and running off the end are errors, not panics.
        assert!(run(&ins(0x20, 0, 0, 64), &seccomp_data(0, 0, &[0; 6])).is_err());
        assert!(run(&ins(0x20, 0, 0, 0), &seccomp_data(0, 0, &[0; 6])).is_err());
        assert!(run(&ins(0x15, 9, 9, 0), &seccomp_data(0, 0, &[0; 6])).is_err());
    }
}
