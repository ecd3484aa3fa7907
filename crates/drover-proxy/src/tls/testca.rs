//! A test certificate authority made with the `openssl` command: a CA and the leaf pairs it
//! issues, in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Clone, Copy)]
pub enum KeyKind {
    /// `BEGIN PRIVATE KEY`, ECDSA P-256.
    Pkcs8,
    /// `BEGIN EC PRIVATE KEY`, after an `EC PARAMETERS` section.
    Sec1,
    /// `BEGIN RSA PRIVATE KEY`.
    Pkcs1,
}

pub struct Ca {
    dir: PathBuf,
    pub cert: PathBuf,
    key: PathBuf,
}

pub fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

impl Ca {
    pub fn new(dir: &Path) -> Ca {
        let cert = dir.join("ca.pem");
        let key = dir.join("ca.key");
        let cnf = dir.join("ca.cnf");
        std::fs::write(
            &cnf,
            "[req]\ndistinguished_name=dn\nx509_extensions=v3\nprompt=no\n[dn]\nCN=drover test CA\n\
             [v3]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n\
             subjectKeyIdentifier=hash\n",
        )
        .unwrap();
        openssl(&[
            "req",
            "-x509",
            "-config",
            s(&cnf),
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            s(&key),
            "-out",
            s(&cert),
            "-days",
            "30",
        ]);
        Ca {
            dir: dir.into(),
            cert,
            key,
        }
    }

    /// A leaf for `names` (its subjectAltName DNS names): `NAME.pem` and `NAME.key`.
    pub fn issue(&self, name: &str, names: &[&str], kind: KeyKind) -> (PathBuf, PathBuf) {
        let key = self.dir.join(format!("{name}.key"));
        let cert = self.dir.join(format!("{name}.pem"));
        let csr = self.dir.join(format!("{name}.csr"));
        let ext = self.dir.join(format!("{name}.ext"));
        match kind {
            KeyKind::Pkcs8 => openssl(&[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                s(&key),
            ]),
            KeyKind::Sec1 => {
                openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-out", s(&key)])
            }
            KeyKind::Pkcs1 => openssl(&["genrsa", "-traditional", "-out", s(&key), "2048"]),
        }
        let cnf = self.dir.join("leaf.cnf");
        std::fs::write(&cnf, "[req]\ndistinguished_name=dn\n[dn]\n").unwrap();
        openssl(&[
            "req",
            "-new",
            "-config",
            s(&cnf),
            "-key",
            s(&key),
            "-subj",
            &format!("/CN={}", names[0]),
            "-out",
            s(&csr),
        ]);
        let san: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
        std::fs::write(
            &ext,
            format!(
                "subjectAltName={}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
                san.join(",")
            ),
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            s(&csr),
            "-CA",
            s(&self.cert),
            "-CAkey",
            s(&self.key),
            "-CAcreateserial",
            "-CAserial",
            s(&self.dir.join("ca.srl")),
            "-days",
            "30",
            "-extfile",
            s(&ext),
            "-out",
            s(&cert),
        ]);
        (cert, key)
    }

    // Used by the drover crate's end-to-end tests, which include this file.
    #[allow(dead_code)]
    /// A leaf for `names` valid only from `start` to `end` (`YYYYMMDDHHMMSSZ`, e.g. long
    /// past): `NAME.pem` and `NAME.key`, signed with `openssl ca`.
    pub fn issue_dated(
        &self,
        name: &str,
        names: &[&str],
        start: &str,
        end: &str,
    ) -> (PathBuf, PathBuf) {
        let (_, key) = self.issue(name, names, KeyKind::Pkcs8);
        let cert = self.dir.join(format!("{name}.pem"));
        let csr = self.dir.join(format!("{name}.csr"));
        let db = self.dir.join(format!("{name}.db"));
        std::fs::create_dir_all(&db).unwrap();
        std::fs::write(db.join("index.txt"), "").unwrap();
        std::fs::write(db.join("serial"), "1000\n").unwrap();
        let san: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
        let cnf = db.join("ca.cnf");
        std::fs::write(
            &cnf,
            format!(
                "[ca]\ndefault_ca=d\n[d]\ndatabase={db}/index.txt\nnew_certs_dir={db}\nserial={db}/serial\n\
                 default_md=sha256\npolicy=p\nx509_extensions=v3\nunique_subject=no\n[p]\ncommonName=supplied\n\
                 [v3]\nsubjectAltName={}\nbasicConstraints=CA:FALSE\n",
                san.join(","),
                db = db.display()
            ),
        )
        .unwrap();
        openssl(&[
            "ca",
            "-batch",
            "-notext",
            "-config",
            s(&cnf),
            "-cert",
            s(&self.cert),
            "-keyfile",
            s(&self.key),
            "-in",
            s(&csr),
            "-out",
            s(&cert),
            "-startdate",
            start,
            "-enddate",
            end,
        ]);
        (cert, key)
    }
}
