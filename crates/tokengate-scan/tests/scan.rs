//! Acceptance tests for PAN discovery: a generated corpus of every brand ×
//! separator style × position, negatives, archives, databases, follow mode,
//! and the rule that no output format ever carries a full number.

// Tests fail by panicking; the workspace bans these only in product code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokengate_scan::{Detector, DetectorConfig, Kind, ScanArgs, ScanOptions, Scanner, run};

/// Completes a number with its Luhn check digit.
fn luhn(body: &str) -> String {
    let mut sum = 0u32;
    for (i, b) in body.bytes().rev().enumerate() {
        let mut d = u32::from(b - b'0');
        if i % 2 == 0 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    format!("{body}{}", (10 - sum % 10) % 10)
}

/// (brand, number, printed grouping) — bodies are arbitrary digits chosen
/// to avoid the low-entropy rules.
fn cards() -> Vec<(&'static str, String, &'static [usize])> {
    vec![
        ("visa", luhn("452601815908301"), &[4, 4, 4, 4]),
        ("visa", luhn("466131860913"), &[4, 4, 5]),
        ("visa", luhn("490996030824628194"), &[4, 4, 4, 4, 3]),
        ("mastercard", luhn("518219935181909"), &[4, 4, 4, 4]),
        ("mastercard", luhn("222137865797543"), &[4, 4, 4, 4]),
        ("mastercard", luhn("272023194875749"), &[4, 4, 4, 4]),
        ("amex", luhn("34118625276018"), &[4, 6, 5]),
        ("amex", luhn("37955597971147"), &[4, 6, 5]),
        ("discover", luhn("601110497465075"), &[4, 4, 4, 4]),
        ("discover", luhn("652917034236671"), &[4, 4, 4, 4]),
        ("discover", luhn("644276842684656"), &[4, 4, 4, 4]),
        ("jcb", luhn("352832122330792"), &[4, 4, 4, 4]),
        ("jcb", luhn("358944026859952"), &[4, 4, 4, 4]),
        ("diners", luhn("3008907866661"), &[4, 6, 4]),
        ("diners", luhn("3676031372159"), &[4, 6, 4]),
        ("unionpay", luhn("626245957117777"), &[4, 4, 4, 4]),
        ("unionpay", luhn("624121547280385280"), &[6, 13]),
        ("maestro", luhn("675984148525388"), &[4, 4, 4, 4]),
        ("maestro", luhn("501885393363387500"), &[4, 4, 4, 4, 3]),
        ("mir", luhn("220047439575513"), &[4, 4, 4, 4]),
        ("rupay", luhn("811373537990751"), &[4, 4, 4, 4]),
    ]
}

fn grouped(d: &str, groups: &[usize], sep: &str) -> String {
    let mut out = Vec::new();
    let mut at = 0;
    for g in groups {
        out.push(&d[at..at + g]);
        at += g;
    }
    out.join(sep)
}

fn masked(d: &str) -> String {
    format!(
        "{}{}{}",
        &d[..6],
        "*".repeat(d.len() - 10),
        &d[d.len() - 4..]
    )
}

const POSITIONS: &[&str] = &[
    "{}",
    "{} charge declined",
    "retrying with {}",
    "{\"card\":{\"number\":\"{}\",\"exp\":\"12/29\"}}",
    "2026-11-03,88123,\"{}\",12/29,EUR",
    "2026-11-03,88123,{},12/29,EUR",
    "<payment><cardNumber>{}</cardNumber></payment>",
    "GET /pay?amount=1299&card={}&exp=1229 HTTP/1.1",
    "GET /pay?card={}",
    "\tcard:\t{}\t",
    "(card {})",
];

#[test]
fn every_brand_separator_and_position_is_found() {
    let det = Detector::default();
    let mut cases = 0;
    for (brand, d, groups) in cards() {
        for sep in ["", " ", "-"] {
            let shown = if sep.is_empty() {
                d.clone()
            } else {
                grouped(&d, groups, sep)
            };
            for pos in POSITIONS {
                if sep == " " && pos.contains("?") {
                    continue; // a space ends a URL query value
                }
                let line = pos.replace("{}", &shown);
                let found: Vec<_> = det.find(line.as_bytes()).collect();
                assert_eq!(found.len(), 1, "{brand} sep={sep:?} in {pos:?}");
                assert_eq!(found[0].brand.as_str(), brand, "{pos:?}");
                assert_eq!(found[0].masked(), masked(&d));
                assert_eq!(&line[found[0].start..found[0].end], shown);
                cases += 1;
            }
        }
    }
    assert!(cases > 500, "{cases}");
}

#[test]
fn many_per_file_with_lines_and_columns() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    let mut want = Vec::new();
    for (i, (_, d, groups)) in cards().into_iter().enumerate() {
        text.push_str("noise 2026-11-03T10:00:00Z id=12345 ip=10.0.0.1\n");
        let shown = grouped(&d, groups, if i % 2 == 0 { " " } else { "-" });
        text.push_str(&format!("x={shown}\n"));
        want.push((2 * i as u64 + 2, 3u64, masked(&d)));
    }
    let path = dir.path().join("app.log");
    std::fs::write(&path, &text).unwrap();
    let scanner = Scanner::new(Detector::default(), &ScanOptions::default()).unwrap();
    let o = scanner.scan_file(&path);
    let got: Vec<_> = o
        .findings
        .iter()
        .map(|r| (r.located.line, r.located.column, r.located.finding.masked()))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn big_files_split_across_threads_give_the_same_findings() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    let all = cards();
    for i in 0..20_000usize {
        let (_, d, g) = &all[i % all.len()];
        match i % 5 {
            0 => text.push_str(&format!("{i} ok {d}\n")),
            1 => text.push_str(&format!("x={} ", grouped(d, g, " "))),
            2 => text.push_str("2026-11-22T10:00:00Z GET /a?b=1 200 512\n"),
            3 => text.push_str(&format!(";{d}=29121010000012345678?")),
            _ => text.push_str(&format!("{}-", grouped(d, g, "-"))),
        }
    }
    let path = dir.path().join("dump.sql");
    std::fs::write(&path, &text).unwrap();
    let run = |threads: usize| {
        let opts = ScanOptions {
            threads,
            split_files_over: Some(1),
            ..Default::default()
        };
        let scanner = Scanner::new(Detector::default(), &opts).unwrap();
        let o = scanner.scan_file(&path);
        assert!(o.errors.is_empty());
        o.findings
            .iter()
            .map(|r| {
                (
                    r.located.offset,
                    r.located.line,
                    r.located.column,
                    r.located.finding.masked(),
                )
            })
            .collect::<Vec<_>>()
    };
    let one = run(1);
    assert!(one.len() > 10_000, "{}", one.len());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let two = pool.install(|| run(2));
    assert_eq!(one, two);
}

#[test]
fn negatives_are_not_reported() {
    let det = Detector::default();
    let visa = luhn("452601815908301");
    let outside = [
        luhn("123456789012345"),
        luhn("700012345678901"),
        luhn("912345678901234"),
    ];
    let mut lines = vec![
        "call +1 415-555-0134 or (020) 7946 0958 or 0044 20 7946 0958".to_string(),
        "+49 170 1234567 / +33 6 12 34 56 78".to_string(),
        "ts=1763841256123 us=1763841256123456 ns=1763841256123456789".to_string(),
        "2026-11-22 19:54:16.123 2026-11-22T19:54:16Z 20261122195416".to_string(),
        "order 2026112212345678901 ORD-000123456789 invoice 00012345678901234567".to_string(),
        "IBAN DE89 3704 0044 0532 0130 00 and GB29 NWBK 6016 1331 9268 19".to_string(),
        "uuid 4bf92f35-77b3-4da6-a3ce-929d0e0e4736 sha 4526018159083012aabbccddeeff00112233"
            .to_string(),
        "ip 192.168.100.200 v1.2.3.4567 port 65535".to_string(),
        format!("inside a longer run: 9{visa}1 and {visa}00 and 77{visa}"),
        format!(
            "odd grouping: {} {} {}",
            &visa[..5],
            &visa[5..10],
            &visa[10..]
        ),
        format!("two separators: {}  {}", &visa[..8], &visa[8..]),
    ];
    for o in &outside {
        lines.push(format!("Luhn-valid, no brand: {o}"));
        assert!(tokengate_core::luhn::is_valid(o.as_bytes()));
    }
    // Documented test cards, repeated and sequential digits.
    lines.push("stripe 4242 4242 4242 4242 and 4111111111111111 and 5555555555554444".into());
    lines.push("amex 378282246310005 discover 6011111111111117".into());
    lines.push(format!(
        "repeated {} sequential {}",
        luhn("455555555555555"),
        luhn("401234567890123")
    ));
    for line in &lines {
        let found: Vec<_> = det.find(line.as_bytes()).map(|f| f.masked()).collect();
        assert!(found.is_empty(), "false positive {found:?} in {line:?}");
    }
}

#[test]
fn test_cards_reported_when_asked() {
    let det = Detector::new(DetectorConfig {
        include_test_cards: true,
        ..Default::default()
    });
    let found: Vec<_> = det
        .find(b"4242 4242 4242 4242 / 4111111111111111")
        .collect();
    assert_eq!(found.len(), 2);
    assert!(found.iter().all(|f| f.test_card));
}

#[test]
fn track_data_is_recognised() {
    let det = Detector::default();
    let d = luhn("452601815908301");
    let t2 = format!(";{d}=29121010000012345678?");
    let t1 = format!("%B{d}^DOE/JANE^2912101000000000000000123000000?");
    let emv = format!("57 13 {d}D29121010000012345678F");
    assert_eq!(
        det.find(t2.as_bytes()).next().map(|f| f.kind),
        Some(Kind::Track2)
    );
    assert_eq!(
        det.find(t1.as_bytes()).next().map(|f| f.kind),
        Some(Kind::Track1)
    );
    assert_eq!(
        det.find(emv.as_bytes()).next().map(|f| f.kind),
        Some(Kind::Track2)
    );
}

fn write_archives(dir: &Path, pan: &str) -> Vec<(PathBuf, String)> {
    use flate2::Compression;
    use flate2::write::GzEncoder;
    let body = format!("line one\nsecond card={pan} end\n");
    let mut out = Vec::new();

    // gzip
    let gz_path = dir.join("app.log.gz");
    let mut gz = GzEncoder::new(
        std::fs::File::create(&gz_path).unwrap(),
        Compression::default(),
    );
    gz.write_all(body.as_bytes()).unwrap();
    gz.finish().unwrap();
    out.push((gz_path.clone(), gz_path.to_string_lossy().into_owned()));

    // tar.gz with a nested zip
    let mut zip_bytes = Vec::new();
    {
        let mut zw = zip::ZipWriter::new(std::io::Cursor::new(&mut zip_bytes));
        let opts = zip::write::SimpleFileOptions::default();
        zw.start_file("inner/notes.txt", opts).unwrap();
        zw.write_all(body.as_bytes()).unwrap();
        zw.finish().unwrap();
    }
    let tgz_path = dir.join("backup.tar.gz");
    {
        let gz = GzEncoder::new(
            std::fs::File::create(&tgz_path).unwrap(),
            Compression::fast(),
        );
        let mut tb = tar::Builder::new(gz);
        for (name, data) in [
            ("logs/a.log", body.as_bytes()),
            ("nested.zip", &zip_bytes[..]),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tb.append_data(&mut h, name, data).unwrap();
        }
        tb.into_inner().unwrap().finish().unwrap();
    }
    let t = tgz_path.to_string_lossy();
    out.push((tgz_path.clone(), format!("{t}!logs/a.log")));
    out.push((tgz_path.clone(), format!("{t}!nested.zip!inner/notes.txt")));

    // zip (on disk, read by seeking)
    let zip_path = dir.join("export.zip");
    {
        let mut zw = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
        let opts = zip::write::SimpleFileOptions::default();
        zw.start_file("data/customers.csv", opts).unwrap();
        zw.write_all(body.as_bytes()).unwrap();
        zw.finish().unwrap();
    }
    out.push((
        zip_path.clone(),
        format!("{}!data/customers.csv", zip_path.to_string_lossy()),
    ));

    // plain tar
    let tar_path = dir.join("plain.tar");
    {
        let mut tb = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tb.append_data(&mut h, "x/y.txt", body.as_bytes()).unwrap();
        tb.finish().unwrap();
    }
    out.push((
        tar_path.clone(),
        format!("{}!x/y.txt", tar_path.to_string_lossy()),
    ));
    out
}

#[test]
fn archives_are_opened() {
    let dir = tempfile::tempdir().unwrap();
    let pan = luhn("518219935181909");
    let expected = write_archives(dir.path(), &pan);
    let scanner = Scanner::new(Detector::default(), &ScanOptions::default()).unwrap();
    let got = Mutex::new(Vec::new());
    scanner.scan_paths(&[dir.path().to_path_buf()], &|o| {
        assert!(o.errors.is_empty(), "{:?}", o.errors);
        for r in o.findings {
            got.lock()
                .unwrap()
                .push((r.path, r.located.line, r.located.finding.masked()));
        }
    });
    let mut got = got.into_inner().unwrap();
    got.sort();
    let mut want: Vec<_> = expected
        .iter()
        .map(|(_, member)| (member.clone(), 2u64, masked(&pan)))
        .collect();
    want.sort();
    assert_eq!(got, want);
}

fn cli(args: ScanArgs) -> (i32, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let code = run(&args, &mut out, &mut err);
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

fn args(paths: &[&Path]) -> ScanArgs {
    ScanArgs {
        paths: paths.iter().map(|p| p.to_path_buf()).collect(),
        min_length: 13,
        watch_interval_ms: 1000,
        ..Default::default()
    }
}

/// All digits of `pan`, plain and in every grouping the test used.
fn assert_no_full_number(text: &str, pans: &[String]) {
    let digits_only: String = text
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == '\n' || *c == '"')
        .collect();
    for p in pans {
        assert!(!text.contains(p.as_str()), "full number in output");
        assert!(
            !digits_only.contains(p.as_str()),
            "full number (with separators) in output"
        );
    }
}

#[test]
fn no_output_format_carries_a_full_number() {
    let dir = tempfile::tempdir().unwrap();
    let pans: Vec<String> = cards().into_iter().map(|(_, d, _)| d).collect();
    let mut text = String::new();
    for (i, (_, d, g)) in cards().into_iter().enumerate() {
        let shown = if i % 3 == 0 {
            d.clone()
        } else {
            grouped(&d, g, " ")
        };
        text.push_str(&format!("{shown} ;{d}=29121010000012345678?\n"));
    }
    std::fs::write(dir.path().join("dump.txt"), &text).unwrap();
    // A file *named* after a card number.
    std::fs::write(dir.path().join(format!("{}.log", pans[0])), &text).unwrap();
    let _ = write_archives(dir.path(), &pans[1]);

    for (json, sarif) in [(false, false), (true, false), (false, true)] {
        let mut a = args(&[dir.path()]);
        a.json = json;
        a.sarif = sarif;
        let (code, out, err) = cli(a);
        assert_eq!(code, 1, "{err}");
        assert!(out.contains("452601******3012"), "masked form present");
        assert_no_full_number(&out, &pans);
        assert_no_full_number(&err, &pans);
        if json {
            for line in out.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                for k in ["path", "line", "column", "brand", "masked"] {
                    assert!(v.get(k).is_some(), "missing {k}");
                }
            }
        }
        if sarif {
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["version"], "2.1.0");
            let results = v["runs"][0]["results"].as_array().unwrap();
            assert!(results.len() > 40);
            assert!(
                results
                    .iter()
                    .any(|r| r["ruleId"] == "tokengate/track-data")
            );
        }
    }
}

#[test]
fn exit_codes_exclude_allow_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let pan = luhn("652917034236671");
    std::fs::write(dir.path().join("clean.txt"), "nothing here 2026-11-22\n").unwrap();
    let (code, out, _) = cli(args(&[&dir.path().join("clean.txt")]));
    assert_eq!((code, out.as_str()), (0, ""));

    std::fs::create_dir(dir.path().join("vendor")).unwrap();
    std::fs::write(
        dir.path().join("vendor/fixture.json"),
        format!("{{\"pan\":\"{pan}\"}}"),
    )
    .unwrap();
    let (code, _, _) = cli(args(&[dir.path()]));
    assert_eq!(code, 1);

    let mut a = args(&[dir.path()]);
    a.exclude = vec!["vendor".into()];
    assert_eq!(cli(a).0, 0);
    let mut a = args(&[dir.path()]);
    a.exclude = vec!["*.json".into()];
    assert_eq!(cli(a).0, 0);
    let mut a = args(&[dir.path()]);
    a.exclude = vec!["vendor/**".into()];
    assert_eq!(cli(a).0, 0);

    let mut a = args(&[dir.path()]);
    a.max_filesize = Some(10);
    assert_eq!(cli(a).0, 0);

    for entry in [pan.clone(), masked(&pan), "path:**/vendor/**".to_string()] {
        let allow = dir.path().join("allow.txt");
        std::fs::write(&allow, format!("# reviewed\n{entry}\n")).unwrap();
        let mut a = args(&[&dir.path().join("vendor")]);
        a.allow = vec![allow];
        assert_eq!(cli(a).0, 0, "allow entry kind {}", entry.len());
    }
    let bad = dir.path().join("bad-allow.txt");
    std::fs::write(&bad, "not a number\n").unwrap();
    let mut a = args(&[dir.path()]);
    a.allow = vec![bad];
    let (code, _, err) = cli(a);
    assert_eq!(code, 2);
    assert!(err.contains("bad-allow.txt:1"), "{err}");

    let (code, _, err) = cli(args(&[&dir.path().join("missing.txt")]));
    assert_eq!(code, 2, "{err}");
    let (code, _, _) = cli(ScanArgs::default());
    assert_eq!(code, 2);
    let mut a = args(&[dir.path()]);
    a.exclude = vec!["[".into()];
    assert_eq!(cli(a).0, 2);
}

#[test]
fn reader_input_like_stdin() {
    let scanner = Scanner::new(Detector::default(), &ScanOptions::default()).unwrap();
    let pan = luhn("358944026859952");
    let text = format!("a\nb {pan}\n");
    let o = scanner.scan_named_reader("-", &mut text.as_bytes());
    assert_eq!(o.findings.len(), 1);
    assert_eq!(o.findings[0].path, "<stdin>");
    assert_eq!(o.findings[0].located.line, 2);
}

#[test]
fn watch_follows_growing_and_truncated_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.log");
    let pan_a = luhn("601110497465075");
    let pan_b = luhn("222137865797543");
    std::fs::write(&path, format!("start {pan_a}\n")).unwrap();
    let scanner = Scanner::new(Detector::default(), &ScanOptions::default()).unwrap();
    let stop = AtomicBool::new(false);
    let found = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        s.spawn(|| {
            let wait_for = |n: usize| {
                for _ in 0..200 {
                    if found.lock().unwrap().len() >= n {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            };
            wait_for(1);
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            // Written in two pieces: the number is split across polls.
            f.write_all(format!("more {}", &pan_b[..7]).as_bytes())
                .unwrap();
            f.flush().unwrap();
            std::thread::sleep(Duration::from_millis(120));
            f.write_all(format!("{} done\n", &pan_b[7..]).as_bytes())
                .unwrap();
            f.flush().unwrap();
            wait_for(2);
            // Truncate and rewrite: read again from the start.
            std::fs::write(&path, format!("rotated {pan_a}\n")).unwrap();
            wait_for(3);
            stop.store(true, Ordering::Relaxed);
        });
        let mut on = |r: tokengate_scan::Report| {
            found
                .lock()
                .unwrap()
                .push((r.located.line, r.located.finding.masked()))
        };
        let mut on_err = |e: tokengate_scan::ScanError| panic!("{e}");
        tokengate_scan::watch::watch(
            &scanner,
            &[dir.path().to_path_buf()],
            Duration::from_millis(50),
            &stop,
            &mut on,
            &mut on_err,
        );
    });
    let found = found.into_inner().unwrap();
    assert_eq!(
        found,
        [
            (1, masked(&pan_a)),
            (2, masked(&pan_b)),
            (1, masked(&pan_a))
        ]
    );
}

#[cfg(feature = "database")]
mod database {
    use super::*;
    use sqlx::Connection;
    use tokengate_scan::db::{Target, scan_database};

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn sqlite_text_blob_and_integer_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let pan_text = luhn("452601815908301");
        let pan_blob = luhn("37955597971147");
        let pan_int = luhn("518219935181909");
        rt().block_on(async {
            let opts = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true);
            let mut c = sqlx::sqlite::SqliteConnection::connect_with(&opts)
                .await
                .unwrap();
            sqlx::query(
                "CREATE TABLE orders (id INTEGER PRIMARY KEY, note TEXT, raw BLOB, num INTEGER)",
            )
            .execute(&mut c)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO orders (note, raw, num) VALUES ('clean', NULL, 42), (?1, ?2, ?3)",
            )
            .bind(format!("customer said\ncard {pan_text}"))
            .bind(format!("blob:{pan_blob}").into_bytes())
            .bind(pan_int.parse::<i64>().unwrap())
            .execute(&mut c)
            .await
            .unwrap();
            c.close().await.unwrap();
        });
        let mut got = Vec::new();
        let target = Target::parse(&format!("sqlite:{}", path.display()));
        scan_database(&Detector::default(), &target, &[], &mut |r| {
            got.push((
                r.path.rsplit('#').next().unwrap().to_string(),
                r.row.clone().unwrap(),
                r.located.line,
                r.located.finding.masked(),
            ))
        })
        .unwrap();
        assert_eq!(
            got,
            [
                (
                    "orders.note".to_string(),
                    "2".to_string(),
                    2,
                    masked(&pan_text)
                ),
                (
                    "orders.raw".to_string(),
                    "2".to_string(),
                    1,
                    masked(&pan_blob)
                ),
                (
                    "orders.num".to_string(),
                    "2".to_string(),
                    1,
                    masked(&pan_int)
                ),
            ]
        );
        // Through the CLI: exit 1, and the output names the column.
        let mut a = args(&[]);
        a.database = vec![path.to_string_lossy().into_owned()];
        a.json = true;
        let (code, out, err) = cli(a);
        assert_eq!(code, 1, "{err}");
        assert_eq!(out.lines().count(), 3);
        assert_no_full_number(&out, &[pan_text, pan_blob, pan_int]);
    }

    #[test]
    fn postgres_text_and_bytea_columns() {
        let Ok(url) = std::env::var("TOKENGATE_TEST_POSTGRES_URL") else {
            eprintln!("TOKENGATE_TEST_POSTGRES_URL not set: PostgreSQL scan test skipped");
            return;
        };
        let schema = format!(
            "tgscan_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        let pan_text = luhn("352832122330792");
        let pan_bytea = luhn("675984148525388");
        let pan_json = luhn("2200474395755136".get(..15).unwrap());
        let pan_array = luhn("644276842684656");
        rt().block_on(async {
            let mut c = sqlx::postgres::PgConnection::connect(&url).await.unwrap();
            for sql in [
                format!("CREATE SCHEMA {schema}"),
                format!(
                    "CREATE TABLE {schema}.payments (id bigserial PRIMARY KEY, note text, \
                     memo varchar(200), raw bytea, body jsonb, tags text[], amount integer)"
                ),
            ] {
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&mut c)
                    .await
                    .unwrap();
            }
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {schema}.payments (note, memo, raw, body, tags, amount) \
                 VALUES ($1, 'nothing', $2, $3::jsonb, ARRAY['vip', $4], 1299), \
                        ('clean', 'clean', NULL, NULL, NULL, 5)"
            )))
            .bind(format!("card {pan_text}"))
            .bind(format!("\x00\x01{pan_bytea}\x02").into_bytes())
            .bind(format!("{{\"card\": \"{pan_json}\"}}"))
            .bind(format!("card {pan_array}"))
            .execute(&mut c)
            .await
            .unwrap();
            c.close().await.unwrap();
        });
        let mut got = Vec::new();
        let result = scan_database(
            &Detector::default(),
            &Target::parse(&url),
            std::slice::from_ref(&schema),
            &mut |r| {
                got.push((
                    r.path.rsplit('.').next().unwrap().to_string(),
                    r.located.finding.masked(),
                ))
            },
        );
        rt().block_on(async {
            let mut c = sqlx::postgres::PgConnection::connect(&url).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .execute(&mut c)
                .await
                .unwrap();
        });
        result.unwrap();
        assert_eq!(
            got,
            [
                ("note".to_string(), masked(&pan_text)),
                ("raw".to_string(), masked(&pan_bytea)),
                ("body".to_string(), masked(&pan_json)),
                ("tags".to_string(), masked(&pan_array)),
            ]
        );
    }
}
