//! Downloads from a Hub-compatible server on loopback (tests/common/hub.rs): into an empty cache,
//! then offline with no request; each refusal's message; the token's destinations; timeouts;
//! resuming; revisions; and `huggingface_hub` itself agreeing with the server and the cache.

mod common;

use common::hub::{Access, HubRepo, HubServer, GOOD_TOKEN, NO_READ_TOKEN, OTHER_TOKEN};
use common::{bin, fixture, hf_home};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

const MODEL: &str = "test-org/tiny-bert";
const DATASET: &str = "test-org/emotion";

fn emotion_snapshot() -> PathBuf {
    let snaps = hf_home().join("hub/datasets--dair-ai--emotion/snapshots");
    std::fs::read_dir(snaps).unwrap().next().unwrap().unwrap().path()
}

/// A model without a tokenizer, for the missing-file message.
fn without_tokenizer(tmp: &Path) -> PathBuf {
    let dir = tmp.join("no-tokenizer");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture("tiny-bert/config.json"), dir.join("config.json")).unwrap();
    dir
}

fn server(tmp: &Path) -> HubServer {
    let mut model = HubRepo::from_dir("models", MODEL, &fixture("tiny-bert"), Access::Public);
    model.add_revision("v1", &fixture("tiny-distilbert"));
    HubServer::start(vec![
        model,
        HubRepo::from_dir("datasets", DATASET, &emotion_snapshot(), Access::Public),
        HubRepo::from_dir("models", "test-org/private-model", &fixture("tiny-bert"), Access::Private),
        HubRepo::from_dir("models", "test-org/gated-model", &fixture("tiny-bert"), Access::Gated),
        HubRepo::from_dir("models", "test-org/no-tokenizer", &without_tokenizer(tmp), Access::Public),
    ])
}

/// `emotune args` against `endpoint` with the cache in `home`; `env` adds or (with "") removes
/// variables. No token unless `env` gives one.
fn run(endpoint: &str, home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env("HF_HOME", home)
        .env("HF_ENDPOINT", endpoint)
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_TOKEN")
        .env_remove("HF_TOKEN_PATH")
        .env_remove("HF_HUB_DOWNLOAD_TIMEOUT");
    for (k, v) in env {
        if v.is_empty() {
            cmd.env_remove(k);
        } else {
            cmd.env(k, v);
        }
    }
    cmd.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn predict(endpoint: &str, home: &Path, model: &str, env: &[(&str, &str)]) -> Output {
    run(endpoint, home, &["predict", "--model", model, "i feel wonderful today"], env)
}

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// The file `path` of the snapshot at `revision` in the cache at `home`.
fn cached(home: &Path, folder: &str, commit: &str, path: &str) -> PathBuf {
    home.join("hub").join(folder).join("snapshots").join(commit).join(path)
}

#[test]
fn train_and_predict_download_into_an_empty_cache_then_run_offline_without_a_request() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = server(tmp.path());
    let home = tmp.path().join("hf");
    let out = tmp.path().join("out");
    let out_s = out.to_str().unwrap();
    let train = [
        "train",
        "--model",
        MODEL,
        "--dataset",
        DATASET,
        "--train-limit",
        "64",
        "--eval-limit",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--output-dir",
        out_s,
    ];
    let o = run(&hub.endpoint, &home, &train, &[]);
    assert!(o.status.success(), "train: {}", stderr(&o));
    let o = predict(&hub.endpoint, &home, MODEL, &[]);
    assert!(o.status.success(), "predict: {}", stderr(&o));
    // What the cache holds is what the server served, byte for byte.
    let (model, dataset) = (hub.repo(MODEL), hub.repo(DATASET));
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        let p = cached(&home, "models--test-org--tiny-bert", &model.commit("main"), f);
        assert_eq!(sha256(&p), model.file("main", f).sha256, "{f}");
    }
    let split = "split/train-00000-of-00001.parquet";
    let p = cached(&home, "datasets--test-org--emotion", &dataset.commit("main"), split);
    assert_eq!(sha256(&p), dataset.file("main", split).sha256);
    let main_ref = std::fs::read_to_string(home.join("hub/models--test-org--tiny-bert/refs/main")).unwrap();
    assert_eq!(main_ref.trim(), model.commit("main"));
    assert!(!hub.requests().is_empty());

    hub.clear_log();
    let offline = [("HF_HUB_OFFLINE", "1")];
    let out2 = tmp.path().join("out2");
    let train_again = [&train[..train.len() - 1], &[out2.to_str().unwrap()]].concat();
    let o = run(&hub.endpoint, &home, &train_again, &offline);
    assert!(o.status.success(), "offline train: {}", stderr(&o));
    let o = predict(&hub.endpoint, &home, MODEL, &offline);
    assert!(o.status.success(), "offline predict: {}", stderr(&o));
    assert!(hub.requests().is_empty(), "offline runs made requests: {:?}", hub.requests());

    // The Hub gone (nothing listens at the endpoint) without HF_HUB_OFFLINE: the cached files are
    // used, with a warning that says so.
    let down = closed_endpoint();
    let o = predict(&down, &home, MODEL, &[]);
    assert!(o.status.success(), "predict with the Hub down: {}", stderr(&o));
    assert!(stderr(&o).contains("warning: cannot reach the Hub at"), "one message style: {}", stderr(&o));
    assert!(stderr(&o).contains("using the cache for the rest of this run"), "{}", stderr(&o));
    assert_eq!(stderr(&o).matches("cannot reach").count(), 1, "one warning, not one per file: {}", stderr(&o));
    // Training too, whose tokenizer files the Hub said do not exist (recorded in .no_exist).
    let out3 = tmp.path().join("out3");
    let train_down = [&train[..train.len() - 1], &[out3.to_str().unwrap()]].concat();
    let o = run(&down, &home, &train_down, &[]);
    assert!(o.status.success(), "train with the Hub down: {}", stderr(&o));
}

/// An endpoint where nothing listens (a port bound, then released).
fn closed_endpoint() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
}

fn assert_fails_with(o: &Output, phrases: &[&str]) {
    assert!(!o.status.success(), "expected a failure; stdout {}", String::from_utf8_lossy(&o.stdout));
    let err = stderr(o);
    for p in phrases {
        assert!(err.contains(p), "expected {p:?} in:\n{err}");
    }
    for secret in [GOOD_TOKEN, OTHER_TOKEN, NO_READ_TOKEN, "hf_wrong"] {
        assert!(!err.contains(secret), "the token was printed:\n{err}");
    }
}

#[test]
fn each_refusal_names_the_repository_and_the_remedy() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = server(tmp.path());
    let home = tmp.path().join("hf");
    let e = hub.endpoint.as_str();
    let not_found = "check the id; if it is private or gated, accept its terms on the Hub and set HF_TOKEN";
    let o = predict(e, &home, "test-org/does-not-exist", &[]);
    let msg = format!("model test-org/does-not-exist was not found on the Hub at {e}");
    assert_fails_with(&o, &[&msg, not_found, "downloading config.json of model test-org/does-not-exist"]);
    assert!(!stderr(&o).contains("HF_HUB_OFFLINE"), "an empty cache cannot help: {}", stderr(&o));

    let o = predict(e, &home, "test-org/private-model", &[]);
    assert_fails_with(&o, &["model test-org/private-model was not found on the Hub", not_found]);
    let o = predict(e, &home, "test-org/private-model", &[("HF_TOKEN", OTHER_TOKEN)]);
    assert_fails_with(&o, &["not found", "(the token from HF_TOKEN was sent and gives no access to it)"]);

    let gated = format!("model test-org/gated-model is gated: accept its terms at {e}/test-org/gated-model");
    let o = predict(e, &home, "test-org/gated-model", &[]);
    assert_fails_with(&o, &[&gated, "then set HF_TOKEN to a token of that account"]);
    let o = predict(e, &home, "test-org/gated-model", &[("HF_TOKEN", OTHER_TOKEN)]);
    assert_fails_with(&o, &[&gated, "(the token from HF_TOKEN was sent and its account has not been granted access)"]);

    let o = predict(e, &home, MODEL, &[("HF_TOKEN", "hf_wrong")]);
    assert_fails_with(&o, &["refused the token from HF_TOKEN as invalid credentials: set HF_TOKEN to a valid token"]);

    let o = predict(e, &home, "test-org/private-model", &[("HF_TOKEN", NO_READ_TOKEN)]);
    let msg = format!("the Hub at {e} forbids reading model test-org/private-model (403: This fine-grained token");
    assert_fails_with(&o, &[&msg, "does not allow it): use a token with read access to it"]);

    let o = predict(e, &home, "test-org/no-tokenizer", &[]);
    assert_fails_with(&o, &["model test-org/no-tokenizer: no file tokenizer.json on the Hub"]);

    let o = run(e, &home, &["predict", "--model", MODEL, "--revision", "nope", "a text"], &[]);
    let msg = "model test-org/tiny-bert has no revision \"nope\" (a branch, tag or commit id): check --revision";
    assert_fails_with(&o, &[msg]);

    let o = run(e, &home, &["check-data", "--dataset", DATASET, "--dataset-revision", "nope"], &[]);
    assert_fails_with(&o, &["dataset test-org/emotion has no revision \"nope\""]);

    let o = run(e, &home, &["check-data", "--dataset", "test-org/no-such-dataset"], &[]);
    assert_fails_with(&o, &["dataset test-org/no-such-dataset was not found on the Hub", not_found]);

    let down = closed_endpoint();
    let o = predict(&down, &home, MODEL, &[]);
    assert_fails_with(&o, &[&format!("cannot reach the Hub at {down}")]);
    assert!(!stderr(&o).contains("HF_HUB_OFFLINE"), "{}", stderr(&o));
    let o = run(&down, &home, &["check-data", "--dataset", DATASET], &[]);
    assert_fails_with(&o, &[&format!("cannot reach the Hub at {down}"), "listing the files of test-org/emotion"]);
}

#[test]
fn the_offline_hint_appears_only_when_the_cache_holds_the_revision() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = server(tmp.path());
    let home = tmp.path().join("hf");
    let o = predict(&hub.endpoint, &home, MODEL, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The cache has the model but not this file: offline, what it has is all there is.
    let commit = hub.repo(MODEL).commit("main");
    std::fs::remove_file(cached(&home, "models--test-org--tiny-bert", &commit, "tokenizer.json")).unwrap();
    let down = closed_endpoint();
    let o = predict(&down, &home, MODEL, &[]);
    assert_fails_with(&o, &["cannot reach the Hub at", "holds test-org/tiny-bert: set HF_HUB_OFFLINE=1"]);
}

#[test]
fn the_token_reaches_the_hub_as_bearer_and_never_the_redirect_host() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = server(tmp.path());
    let home = tmp.path().join("hf");
    let o = predict(&hub.endpoint, &home, "test-org/private-model", &[("HF_TOKEN", GOOD_TOKEN)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let log = hub.requests();
    let bearer = format!("Bearer {GOOD_TOKEN}");
    let on_hub: Vec<_> = log.iter().filter(|r| !r.cdn).collect();
    let on_cdn: Vec<_> = log.iter().filter(|r| r.cdn).collect();
    assert!(!on_hub.is_empty() && !on_cdn.is_empty(), "{log:?}");
    assert!(on_hub.iter().all(|r| r.authorization.as_deref() == Some(bearer.as_str())), "{log:?}");
    assert!(on_cdn.iter().all(|r| r.authorization.is_none()), "the token went to the redirect host: {log:?}");

    // The token file named by HF_TOKEN_PATH, then $HF_HOME/token, as huggingface_hub reads them.
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, format!("{GOOD_TOKEN}\n")).unwrap();
    let home2 = tmp.path().join("hf2");
    let o =
        predict(&hub.endpoint, &home2, "test-org/private-model", &[("HF_TOKEN_PATH", token_file.to_str().unwrap())]);
    assert!(o.status.success(), "HF_TOKEN_PATH: {}", stderr(&o));
    let home3 = tmp.path().join("hf3");
    std::fs::create_dir_all(&home3).unwrap();
    std::fs::copy(&token_file, home3.join("token")).unwrap();
    let o = predict(&hub.endpoint, &home3, "test-org/private-model", &[]);
    assert!(o.status.success(), "$HF_HOME/token: {}", stderr(&o));
    // HF_TOKEN comes first.
    let home4 = tmp.path().join("hf4");
    std::fs::create_dir_all(&home4).unwrap();
    std::fs::copy(&token_file, home4.join("token")).unwrap();
    let o = predict(&hub.endpoint, &home4, "test-org/private-model", &[("HF_TOKEN", OTHER_TOKEN)]);
    assert_fails_with(&o, &["the token from HF_TOKEN was sent"]);
}

#[test]
fn a_stalled_download_fails_within_its_timeouts_and_the_next_run_resumes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = server(tmp.path());
    let home = tmp.path().join("hf");
    let weights = hub.repo(MODEL).file("main", "model.safetensors");
    let (sha, len) = (weights.sha256.clone(), weights.bytes.len());
    hub.stall_downloads(&sha);
    let start = Instant::now();
    let o = predict(&hub.endpoint, &home, MODEL, &[("HF_HUB_DOWNLOAD_TIMEOUT", "1")]);
    let took = start.elapsed().as_secs_f64();
    assert_fails_with(&o, &["did not answer within 1 s, 5 tries (set HF_HUB_DOWNLOAD_TIMEOUT to wait longer)"]);
    // Five tries of 1 s each and the waits between them (1 + 2 + 4 + 8 s): about 20 s.
    assert!(took < 40.0, "took {took:.1} s");
    let part = home.join(format!("hub/models--test-org--tiny-bert/blobs/{sha}.incomplete"));
    let have = std::fs::metadata(&part).unwrap().len() as usize;
    assert!(have >= len / 4 && have < len, "{have} of {len} bytes kept for resuming");

    hub.clear_faults();
    hub.clear_log();
    let o = predict(&hub.endpoint, &home, MODEL, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ranges: Vec<_> = hub.requests().into_iter().filter(|r| r.cdn && r.path.contains(&sha)).collect();
    assert_eq!(ranges.len(), 1, "{ranges:?}");
    assert_eq!(ranges[0].range.as_deref(), Some(format!("bytes={have}-").as_str()));
    assert_eq!(sha256(&home.join(format!("hub/models--test-org--tiny-bert/blobs/{sha}"))), sha);
    assert!(!part.exists());
}

#[test]
fn a_download_cut_half_way_resumes_to_the_right_sha256() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = server(tmp.path());
    let home = tmp.path().join("hf");
    let sha = hub.repo(MODEL).file("main", "model.safetensors").sha256.clone();
    hub.cut_next_download(&sha);
    let o = predict(&hub.endpoint, &home, MODEL, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let gets: Vec<_> = hub.requests().into_iter().filter(|r| r.cdn && r.path.contains(&sha)).collect();
    assert_eq!(gets.len(), 2, "one cut, one resumed: {gets:?}");
    assert!(gets[0].range.is_none() && gets[1].range.as_deref().is_some_and(|r| r != "bytes=0-"), "{gets:?}");
    assert_eq!(sha256(&home.join(format!("hub/models--test-org--tiny-bert/blobs/{sha}"))), sha);
}

/// A part left complete (a run stopped before renaming it) is used without a byte more; one
/// longer than the file, or with the wrong bytes (found by the hash), is downloaded again whole.
#[test]
fn a_leftover_part_is_used_only_when_it_is_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = server(tmp.path());
    let weights = hub.repo(MODEL).file("main", "model.safetensors");
    let (sha, bytes) = (weights.sha256.clone(), weights.bytes.clone());
    let blobs = |home: &Path| home.join("hub/models--test-org--tiny-bert/blobs");
    let cases: [(&str, Vec<u8>, usize); 3] = [
        ("complete", bytes.to_vec(), 0),
        ("too long", [bytes.as_slice(), b"extra"].concat(), 1),
        ("wrong bytes", vec![7u8; bytes.len()], 1),
    ];
    for (what, part, gets) in cases {
        let home = tmp.path().join(what.replace(' ', "-"));
        std::fs::create_dir_all(blobs(&home)).unwrap();
        std::fs::write(blobs(&home).join(format!("{sha}.incomplete")), &part).unwrap();
        hub.clear_log();
        let o = predict(&hub.endpoint, &home, MODEL, &[]);
        let got = hub.requests().into_iter().filter(|r| r.cdn && r.path.contains(&sha)).count();
        assert!(o.status.success(), "{what}: {}", stderr(&o));
        assert_eq!(got, gets, "{what}: downloads of the weights");
        if what == "wrong bytes" {
            assert!(stderr(&o).contains("the downloaded bytes hash to sha256"), "{}", stderr(&o));
            assert!(stderr(&o).contains("downloading it again whole"), "{}", stderr(&o));
        }
        assert_eq!(sha256(&blobs(&home).join(&sha)), sha, "{what}");
    }
}

#[test]
fn revision_picks_a_tag_or_a_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = server(tmp.path());
    let home = tmp.path().join("hf");
    let repo = hub.repo(MODEL);
    let o = run(&hub.endpoint, &home, &["predict", "--model", MODEL, "--revision", "v1", "a text"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v1 = repo.commit("v1");
    let tag = std::fs::read_to_string(home.join("hub/models--test-org--tiny-bert/refs/v1")).unwrap();
    assert_eq!(tag.trim(), v1);
    let config = cached(&home, "models--test-org--tiny-bert", &v1, "config.json");
    assert_eq!(sha256(&config), sha256(&fixture("tiny-distilbert/config.json")));
    assert!(!home.join("hub/models--test-org--tiny-bert/refs/main").exists());

    // A commit id never changes: once cached, it is read without asking the Hub.
    let at_commit = format!("{MODEL}@{v1}");
    hub.clear_log();
    let o = predict(&hub.endpoint, &home, &at_commit, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());

    let o = run(&hub.endpoint, &home, &["predict", "--model", &at_commit, "--revision", "v1", "a text"], &[]);
    assert_fails_with(&o, &["already names a revision"]);
    let dir = fixture("tiny-bert");
    let o = run(&hub.endpoint, &home, &["predict", "--model", dir.to_str().unwrap(), "--revision", "v1", "x"], &[]);
    assert_fails_with(&o, &["is a local directory; a revision applies to a Hub id"]);
    let o = run(&hub.endpoint, &home, &["predict", "--model", MODEL, "--revision", "../../x", "a text"], &[]);
    assert_fails_with(&o, &["expected a branch, tag or commit id"]);
}

/// The server answers as the Hub does by `huggingface_hub`'s own reading, and the cache emotune
/// fills is one `huggingface_hub` reads offline.
#[test]
fn huggingface_hub_agrees_with_the_server_and_reads_the_cache() {
    let has_hub =
        Command::new("python3").args(["-c", "import huggingface_hub"]).output().is_ok_and(|o| o.status.success());
    if !has_hub {
        println!("NOT CHECKED here: python3 with huggingface_hub is missing (scripts/test installs it)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let hub = server(tmp.path());
    let home = tmp.path().join("hf");
    let o = predict(&hub.endpoint, &home, MODEL, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let script = r#"
import hashlib, json, os, sys
from pathlib import Path
from huggingface_hub import snapshot_download, hf_hub_download
from huggingface_hub.errors import RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError
out = {}
for repo, kind in [("test-org/tiny-bert", "model"), ("test-org/emotion", "dataset")]:
    root = Path(snapshot_download(repo, repo_type=kind, cache_dir=sys.argv[1]))
    out[repo] = {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}
def error(**kw):
    try:
        hf_hub_download(filename="config.json", cache_dir=sys.argv[1], **kw)
        return "none"
    except Exception as e:
        return type(e).__name__
out["missing"] = error(repo_id="test-org/does-not-exist")
out["gated"] = error(repo_id="test-org/gated-model")
out["revision"] = error(repo_id="test-org/tiny-bert", revision="nope")
os.environ["HF_HUB_OFFLINE"] = "1"
import huggingface_hub.constants as c
c.HF_HUB_OFFLINE = True
p = hf_hub_download("test-org/tiny-bert", "model.safetensors", cache_dir=sys.argv[2])
out["offline"] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
print(json.dumps(out))
"#;
    let py_cache = tmp.path().join("py-cache");
    let o = Command::new("python3")
        .args(["-c", script, py_cache.to_str().unwrap(), home.join("hub").to_str().unwrap()])
        .env("HF_ENDPOINT", &hub.endpoint)
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_TOKEN")
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "python: {}", stderr(&o));
    let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for id in [MODEL, DATASET] {
        let repo = hub.repo(id);
        let files = got[id].as_object().unwrap();
        assert_eq!(files.len(), repo.file_count("main"), "{id}: {files:?}");
        for (path, sha) in files {
            assert_eq!(sha.as_str().unwrap(), repo.file("main", path).sha256, "{id} {path}");
        }
    }
    assert_eq!(got["missing"], "RepositoryNotFoundError");
    assert_eq!(got["gated"], "GatedRepoError");
    assert_eq!(got["revision"], "RevisionNotFoundError");
    assert_eq!(got["offline"], hub.repo(MODEL).file("main", "model.safetensors").sha256.as_str());
}
