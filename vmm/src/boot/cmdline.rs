//! The kernel command line: the VMM's base arguments, the user's, and host workarounds.

use linux_loader::cmdline::Cmdline;

use crate::arch::layout::CMDLINE_MAX_SIZE;

/// What every sliver kernel gets: console on COM1, reboot through the i8042 (which the VMM
/// treats as power-off), reboot at once on panic, no PCI probing (devices are virtio-mmio).
pub const BASE_ARGS: &str = "console=ttyS0 reboot=k panic=-1 pci=off";

/// Errors building the command line.
#[derive(Debug, thiserror::Error)]
pub enum CmdlineError {
    /// Longer than Linux accepts.
    #[error("--cmdline: the kernel command line would be {len} bytes; Linux accepts at most {max}", max = CMDLINE_MAX_SIZE - 1)]
    TooLong {
        /// Length it would have had.
        len: usize,
    },
    /// An odd number of double quotes would swallow every argument after it.
    #[error("--cmdline: {arg:?} has an unbalanced double quote")]
    UnbalancedQuote {
        /// The offending piece.
        arg: String,
    },
    /// Not a valid command line (non-ASCII, misplaced quotes, unquoted value with spaces).
    #[error("--cmdline: {arg:?} is not a valid kernel argument: {reason}")]
    Invalid {
        /// The offending piece.
        arg: String,
        /// linux-loader's reason.
        reason: linux_loader::cmdline::Error,
    },
}

/// Base arguments, then `user`, then `extra` (workarounds and device descriptions).
pub fn build(user: Option<&str>, extra: &[String]) -> Result<Cmdline, CmdlineError> {
    let parts: Vec<&str> = std::iter::once(BASE_ARGS)
        .chain(user.map(str::trim).filter(|s| !s.is_empty()))
        .chain(extra.iter().map(String::as_str))
        .collect();
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|reason| CmdlineError::Invalid {
        arg: String::new(),
        reason,
    })?;
    for part in &parts {
        if part.matches('"').count() % 2 == 1 {
            return Err(CmdlineError::UnbalancedQuote {
                arg: (*part).to_string(),
            });
        }
        match cmdline.insert_str(part) {
            Ok(()) => {}
            Err(linux_loader::cmdline::Error::TooLarge) => {
                let len = parts.iter().map(|p| p.trim().len()).sum::<usize>() + parts.len() - 1;
                return Err(CmdlineError::TooLong { len });
            }
            Err(reason) => {
                return Err(CmdlineError::Invalid {
                    arg: (*part).to_string(),
                    reason,
                })
            }
        }
    }
    Ok(cmdline)
}

/// The command line as text (for logs and tests).
pub fn as_string(cmdline: &Cmdline) -> String {
    cmdline
        .as_cstring()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_then_user_then_extra() {
        let c = build(Some(" quiet sliver_cmd=\"echo hi\" "), &["noxsave".into()]).expect("ok");
        assert_eq!(
            as_string(&c),
            format!("{BASE_ARGS} quiet sliver_cmd=\"echo hi\" noxsave")
        );
    }

    #[test]
    fn no_user_args() {
        assert_eq!(as_string(&build(None, &[]).expect("ok")), BASE_ARGS);
        assert_eq!(as_string(&build(Some("  "), &[]).expect("ok")), BASE_ARGS);
    }

    #[test]
    fn too_long_reports_the_length() {
        let long = "x".repeat(3000);
        let e = build(Some(&long), &[]).expect_err("too long");
        assert!(matches!(e, CmdlineError::TooLong { len } if len == BASE_ARGS.len() + 1 + 3000));
        assert!(e.to_string().contains("at most 2047"), "{e}");
    }

    #[test]
    fn exactly_at_the_limit_fits() {
        let room = CMDLINE_MAX_SIZE - 1 - BASE_ARGS.len() - 1;
        let c = build(Some(&"y".repeat(room)), &[]).expect("fits");
        assert_eq!(as_string(&c).len(), CMDLINE_MAX_SIZE - 1);
        build(Some(&"y".repeat(room + 1)), &[]).expect_err("one over");
    }

    #[test]
    fn unbalanced_quote_is_refused() {
        let e = build(Some("bad=\"un closed"), &[]).expect_err("invalid");
        assert!(matches!(e, CmdlineError::UnbalancedQuote { .. }), "{e}");
        assert!(e.to_string().contains("bad="), "{e}");
    }

    #[test]
    fn non_ascii_is_refused() {
        let e = build(Some("name=caf\u{e9}"), &[]).expect_err("invalid");
        assert!(matches!(e, CmdlineError::Invalid { .. }), "{e}");
    }
}
