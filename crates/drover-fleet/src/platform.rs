//! A host's platform, as `host setup` learns it over ssh before copying a binary there (its
//! `uname -m` and C library), and whether a binary's [`Needs`] fit it. No I/O here: the
//! probe is shell text, and its output is parsed and judged by pure functions.

use crate::elf::{Libc, Needs, Version, canonical_machine};

/// Shell text printing `key=value` lines: the machine, the kernel, glibc's version (as
/// `getconf` says it), the first line of `ldd --version`, and a musl loader if one is there.
pub const PROBE: &str = "echo \"machine=$(uname -m)\"; echo \"kernel=$(uname -s)\"; \
echo \"glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null)\"; \
echo \"ldd=$(ldd --version 2>&1 | head -n 1)\"; \
echo \"musl=$(ls /lib/ld-musl-* 2>/dev/null | head -n 1)\"";

/// What a host offers a binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `uname -m`, as it said it.
    pub machine: String,
    /// `uname -s` (`Linux`).
    pub kernel: String,
    pub libc: HostLibc,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostLibc {
    Glibc(Version),
    Musl,
    /// Neither `getconf` nor `ldd` named one.
    Unknown,
}

impl std::fmt::Display for HostLibc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostLibc::Glibc(v) => write!(f, "glibc {v}"),
            HostLibc::Musl => f.write_str("musl"),
            HostLibc::Unknown => f.write_str("no C library drover recognises"),
        }
    }
}

/// Reads the output of [`PROBE`].
pub fn parse_probe(out: &str) -> Platform {
    let get = |key: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or("")
            .trim()
    };
    let glibc = get("glibc")
        .strip_prefix("glibc ")
        .and_then(Version::parse)
        .or_else(|| {
            // `ldd (Debian GLIBC 2.31-13) 2.31`, `ldd (GNU libc) 2.17`: the version ends the
            // first line.
            let ldd = get("ldd");
            (ldd.contains("GLIBC") || ldd.contains("GNU libc"))
                .then(|| ldd.split_whitespace().last().and_then(Version::parse))
                .flatten()
        });
    let libc = match glibc {
        Some(v) => HostLibc::Glibc(v),
        None if get("ldd").contains("musl") || !get("musl").is_empty() => HostLibc::Musl,
        None => HostLibc::Unknown,
    };
    Platform {
        machine: get("machine").to_string(),
        kernel: get("kernel").to_string(),
        libc,
    }
}

/// Why a binary cannot run on a host: the message (naming the host, what it found and what
/// the binary needs) and a hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub message: String,
    pub hint: String,
}

/// Whether the binary at `path` (named in the words) with `needs` can start on `host`'s
/// `platform`.
pub fn check(host: &str, platform: &Platform, path: &str, needs: &Needs) -> Result<(), Mismatch> {
    let kernel = if platform.kernel.is_empty() {
        String::new()
    } else {
        format!(" ({})", platform.kernel)
    };
    if !platform.kernel.is_empty() && platform.kernel != "Linux" {
        return Err(Mismatch {
            message: format!(
                "host {host} runs {}; {path} is a Linux binary",
                platform.kernel
            ),
            hint: "drover runs on Linux hosts only".into(),
        });
    }
    if canonical_machine(&platform.machine) != needs.machine {
        return Err(Mismatch {
            message: format!(
                "host {host} is {}{kernel}; {path} is built for {}",
                platform.machine, needs.machine
            ),
            hint: match canonical_machine(&platform.machine).as_str() {
                m @ ("x86_64" | "aarch64") => format!(
                    "pass --binary PATH with a drover built for {m}: `DROVER_ARCH={m} bash dist/build-release.sh` builds target/{m}-unknown-linux-gnu/release/drover"
                ),
                _ => format!(
                    "pass --binary PATH with a drover built for {}",
                    platform.machine
                ),
            },
        });
    }
    let m = &needs.machine;
    let arch = if m == "x86_64" {
        String::new()
    } else {
        format!("DROVER_ARCH={m} ")
    };
    let rebuild = format!(
        "build with `{arch}bash dist/build-release.sh` (runs on glibc 2.17 and later) and pass --binary target/{m}-unknown-linux-gnu/release/drover"
    );
    match (&needs.libc, &platform.libc) {
        (Libc::Static, _) => Ok(()),
        (Libc::Glibc(Some(need)), HostLibc::Glibc(has)) if need > has => Err(Mismatch {
            message: format!("host {host} has glibc {has}; {path} needs glibc {need}"),
            hint: rebuild.clone(),
        }),
        (Libc::Glibc(_), HostLibc::Glibc(_)) | (Libc::Musl, HostLibc::Musl) => Ok(()),
        (need, has) => Err(Mismatch {
            message: format!("host {host} has {has}; {path} needs {need}"),
            hint: match has {
                HostLibc::Musl => "pass --binary PATH with a static (musl) build of drover".into(),
                _ => rebuild,
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x86(libc: Libc) -> Needs {
        Needs {
            machine: "x86_64".into(),
            libc,
        }
    }

    #[test]
    fn probes_read() {
        let debian11 = "machine=x86_64\nkernel=Linux\nglibc=glibc 2.31\nldd=ldd (Debian GLIBC 2.31-13+deb11u5) 2.31\nmusl=\n";
        assert_eq!(
            parse_probe(debian11),
            Platform {
                machine: "x86_64".into(),
                kernel: "Linux".into(),
                libc: HostLibc::Glibc(Version(2, 31)),
            }
        );
        // No getconf: ldd says it.
        let rhel7 = "machine=x86_64\nkernel=Linux\nglibc=\nldd=ldd (GNU libc) 2.17\nmusl=\n";
        assert_eq!(parse_probe(rhel7).libc, HostLibc::Glibc(Version(2, 17)));
        let alpine = "machine=aarch64\nkernel=Linux\nglibc=\nldd=musl libc (aarch64)\nmusl=/lib/ld-musl-aarch64.so.1\n";
        assert_eq!(parse_probe(alpine).libc, HostLibc::Musl);
        assert_eq!(parse_probe("machine=x86_64\n").libc, HostLibc::Unknown);
    }

    #[test]
    fn what_fits() {
        let host = |machine: &str, libc| Platform {
            machine: machine.into(),
            kernel: "Linux".into(),
            libc,
        };
        let old = host("x86_64", HostLibc::Glibc(Version(2, 31)));
        let new = x86(Libc::Glibc(Some(Version(2, 34))));
        let e = check("web-2", &old, "/x/drover", &new).unwrap_err();
        assert_eq!(
            e.message,
            "host web-2 has glibc 2.31; /x/drover needs glibc 2.34"
        );
        assert!(e.hint.contains("dist/build-release.sh"), "{}", e.hint);
        assert_eq!(
            check(
                "web-2",
                &old,
                "/x/drover",
                &x86(Libc::Glibc(Some(Version(2, 17))))
            ),
            Ok(())
        );
        assert_eq!(
            check("web-2", &old, "/x/drover", &x86(Libc::Static)),
            Ok(())
        );

        let arm = host("aarch64", HostLibc::Glibc(Version(2, 36)));
        let e = check("web-3", &arm, "/x/drover", &new).unwrap_err();
        assert_eq!(
            e.message,
            "host web-3 is aarch64 (Linux); /x/drover is built for x86_64"
        );
        assert_eq!(
            e.hint,
            "pass --binary PATH with a drover built for aarch64: `DROVER_ARCH=aarch64 bash dist/build-release.sh` builds target/aarch64-unknown-linux-gnu/release/drover"
        );
        let arm_build = Needs {
            machine: "aarch64".into(),
            libc: Libc::Glibc(Some(Version(2, 17))),
        };
        assert_eq!(check("web-3", &arm, "/x/drover", &arm_build), Ok(()));
        let arm64 = host("arm64", HostLibc::Glibc(Version(2, 36)));
        assert_eq!(check("web-3", &arm64, "/x/drover", &arm_build), Ok(()));

        let alpine = host("x86_64", HostLibc::Musl);
        let e = check("a", &alpine, "/x/drover", &new).unwrap_err();
        assert_eq!(e.message, "host a has musl; /x/drover needs glibc 2.34");
        assert_eq!(check("a", &alpine, "/x/drover", &x86(Libc::Musl)), Ok(()));
        let bsd = Platform {
            kernel: "FreeBSD".into(),
            ..old.clone()
        };
        assert!(check("b", &bsd, "/x/drover", &new).is_err());
    }
}
