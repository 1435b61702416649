//! TLS in the binary: `keyward serve` with `KEYWARD_TLS_CERT`/`KEYWARD_TLS_KEY` serves HTTPS
//! with certificates generated here (a CA and a leaf for 127.0.0.1), marks dashboard cookies
//! `Secure` and `__Host-`, reads both files again on SIGHUP (keeping the old pair when the new
//! one does not load), and refuses to start with files it cannot use.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::helpers::TempDir;
use crate::secrets::{start_with, stop};

const BIN: &str = env!("CARGO_BIN_EXE_keyward");

/// A CA and a leaf for `localhost` and 127.0.0.1 signed by it: (CA PEM, leaf PEM, leaf key PEM).
fn issue() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    (ca.pem(), leaf.pem(), leaf_key.serialize_pem())
}

/// A client that trusts only `ca` and opens a new connection for every request.
fn client(ca: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn write(dir: &Path, cert: &str, key: &str) {
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
}

#[tokio::test]
async fn serves_https_with_secure_cookies_and_reloads_its_certificate_on_sighup() {
    let dir = TempDir::new();
    let (ca1, cert1, key1) = issue();
    write(&dir.0, &cert1, &key1);
    let db = format!("sqlite://{}", dir.0.join("k.db").display());
    let cert_path = dir.0.join("cert.pem").display().to_string();
    let key_path = dir.0.join("key.pem").display().to_string();
    let p = start_with(
        &db,
        &[
            ("KEYWARD_TLS_CERT", &cert_path),
            ("KEYWARD_TLS_KEY", &key_path),
        ],
    );
    assert!(p.url.starts_with("https://"), "{}", p.url);
    // The first-run link is an https link. It may be printed on the other
    // stream just after the "listening" line, so wait for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let setup = loop {
        if let Some(w) = p
            .log()
            .split_whitespace()
            .find(|w| w.contains("/setup?token="))
        {
            break w.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a setup link: {}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(setup.starts_with("https://127.0.0.1:"), "{setup}");

    let r = client(&ca1)
        .get(format!("{}/healthz", p.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Cookies over the server's own TLS are Secure and __Host- prefixed.
    let r = client(&ca1).get(&setup).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let cookies: Vec<String> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert!(!cookies.is_empty());
    for c in &cookies {
        assert!(c.starts_with("__Host-"), "{c}");
        assert!(c.contains("Secure"), "{c}");
    }

    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = p.url.replacen("https://", "http://", 1);
    let r = reqwest::Client::new()
        .get(format!("{plain}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(r.is_err(), "plain HTTP answered: {r:?}");

    // A broken renewal is refused and the old pair stays in use.
    std::fs::write(dir.0.join("cert.pem"), "not a certificate").unwrap();
    p.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !p.log().contains("not reloaded") {
        assert!(std::time::Instant::now() < deadline, "{}", p.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = client(&ca1)
        .get(format!("{}/healthz", p.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the previous certificate stays in use");

    // A good renewal (another CA) takes over for new connections.
    let (ca2, cert2, key2) = issue();
    write(&dir.0, &cert2, &key2);
    p.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match client(&ca2).get(format!("{}/healthz", p.url)).send().await {
            Ok(r) if r.status() == 200 => break,
            other => {
                assert!(std::time::Instant::now() < deadline, "{other:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let old = client(&ca1).get(format!("{}/healthz", p.url)).send().await;
    assert!(old.is_err(), "the old certificate is no longer served");
    let log = stop(p);
    assert!(!log.contains("PRIVATE KEY"), "no key material in the log");
}

#[test]
fn refuses_to_start_with_a_certificate_it_cannot_use() {
    let dir = TempDir::new();
    let db = format!("sqlite://{}", dir.0.join("k.db").display());
    let (_, cert1, _) = issue();
    let (_, _, key2) = issue();
    write(&dir.0, &cert1, &key2);
    let cert = dir.0.join("cert.pem");
    let key = dir.0.join("key.pem");
    let run = |env: &[(&str, &Path)]| {
        let out = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &db])
            .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };

    // A key that does not belong to the certificate.
    let (code, err) = run(&[("KEYWARD_TLS_CERT", &cert), ("KEYWARD_TLS_KEY", &key)]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot be used together"), "{err}");
    assert!(!err.contains("PRIVATE KEY"), "{err}");

    // A missing file is named.
    let missing = dir.0.join("missing.pem");
    let (code, err) = run(&[("KEYWARD_TLS_CERT", &missing), ("KEYWARD_TLS_KEY", &key)]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("missing.pem"), "{err}");

    // A file that holds no key.
    let (code, err) = run(&[("KEYWARD_TLS_CERT", &cert), ("KEYWARD_TLS_KEY", &cert)]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no private key"), "{err}");

    // One of the two alone is a usage error.
    let (code, err) = run(&[("KEYWARD_TLS_CERT", &cert)]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.to_lowercase().contains("tls-key"), "{err}");
}
