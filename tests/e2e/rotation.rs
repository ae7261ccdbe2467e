//! On-demand rotation: a new HSM object per version, old blobs keep decrypting.

use kms_client::v1 as pb;
use kms_e2e::TestEnv;
use tonic::Code;

use crate::{ctx, expect_error};

fn blob_version(blob: &[u8]) -> u32 {
    u32::from_be_bytes(blob[17..21].try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_adds_a_version_and_old_blobs_still_decrypt() {
    let env = TestEnv::new().with_token_storage();
    let kmsd = env.start();
    let mut c = kmsd.client().await;
    let key = c.create_key("rotating").await.unwrap().key_id;
    let old = c
        .encrypt(&key, b"before", &ctx(&[]))
        .await
        .unwrap()
        .ciphertext_blob;
    assert_eq!(blob_version(&old), 1);

    assert_eq!(c.rotate_key_on_demand(&key).await.unwrap(), 2);
    assert_eq!(c.describe_key(&key).await.unwrap().current_key_version, 2);
    let new = c
        .encrypt(&key, b"after", &ctx(&[]))
        .await
        .unwrap()
        .ciphertext_blob;
    assert_eq!(blob_version(&new), 2);
    assert_eq!(
        *c.decrypt(&old, &ctx(&[]), None).await.unwrap().plaintext,
        b"before"
    );
    assert_eq!(
        *c.decrypt(&new, &ctx(&[]), None).await.unwrap().plaintext,
        b"after"
    );

    // ReEncrypt to the same key moves a blob to the current version.
    let moved = c
        .re_encrypt(pb::ReEncryptRequest {
            ciphertext_blob: old.clone(),
            destination_key_id: key.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(blob_version(&moved.ciphertext_blob), 2);

    let rotations = c.list_all_key_rotations(&key).await.unwrap();
    assert_eq!(rotations.len(), 1);
    assert_eq!(rotations[0].key_version, 2);
    assert_eq!(rotations[0].rotation_type(), pb::RotationType::OnDemand);

    let mut labels = env.hsm_key_labels();
    labels.sort();
    assert_eq!(labels, [format!("kms/{key}/v1"), format!("kms/{key}/v2")]);

    c.disable_key(&key).await.unwrap();
    expect_error(
        c.rotate_key_on_demand(&key).await,
        Code::FailedPrecondition,
        "DisabledException",
    );
    c.enable_key(&key).await.unwrap();

    // Versions survive a restart.
    drop(c);
    drop(kmsd);
    let kmsd = env.start();
    let mut c = kmsd.client().await;
    assert_eq!(
        *c.decrypt(&old, &ctx(&[]), None).await.unwrap().plaintext,
        b"before"
    );
    let again = c
        .encrypt(&key, b"x", &ctx(&[]))
        .await
        .unwrap()
        .ciphertext_blob;
    assert_eq!(blob_version(&again), 2);

    // Through kmsctl.
    let out = kmsd.kmsctl(
        &["--output", "json", "rotate-key-on-demand", "--key-id", &key],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(meta["current_key_version"], 3);
    let out = kmsd.kmsctl(
        &["--output", "json", "list-key-rotations", "--key-id", &key],
        b"",
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["rotations"].as_array().map(Vec::len), Some(2));
    assert_eq!(listed["rotations"][1]["rotation_type"], "ON_DEMAND");
    let out = kmsd.kmsctl(&["--output", "json", "describe-key", "--key-id", &key], b"");
    let described: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(described["versions"].as_array().map(Vec::len), Some(3));
    assert_eq!(described["versions"][2]["key_version"], 3);
    let text = kmsd.kmsctl(&["describe-key", "--key-id", &key], b"");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("v3") && text.contains("ON_DEMAND"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_that_fell_due_while_kmsd_was_down_runs_at_startup() {
    let env = TestEnv::new();
    let kmsd = env.start();
    let mut c = kmsd.client().await;
    let key = c.create_key("scheduled").await.unwrap().key_id;
    let old = c
        .encrypt(&key, b"v1", &ctx(&[]))
        .await
        .unwrap()
        .ciphertext_blob;
    expect_error(
        c.enable_key_rotation(&key, Some(89)).await,
        Code::InvalidArgument,
        "ValidationException",
    );
    c.enable_key_rotation(&key, Some(90)).await.unwrap();
    let status = c.get_key_rotation_status(&key).await.unwrap();
    assert!(status.key_rotation_enabled);
    assert_eq!(status.rotation_period_in_days, Some(90));
    let next = status.next_rotation_date.unwrap().seconds;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let in_90_days = i64::try_from(now).unwrap() + 90 * 86_400;
    assert!(
        (next - in_90_days).abs() < 120,
        "next rotation {next}, expected about {in_90_days}"
    );
    drop(c);
    drop(kmsd);

    // 91 days later, by kmsd's clock.
    let kmsd = env.start_shifted("+91d");
    let mut c = kmsd.client().await;
    assert_eq!(c.describe_key(&key).await.unwrap().current_key_version, 2);
    let rotations = c.list_all_key_rotations(&key).await.unwrap();
    assert_eq!(rotations.len(), 1);
    assert_eq!(rotations[0].rotation_type(), pb::RotationType::Automatic);
    let next_after = c
        .get_key_rotation_status(&key)
        .await
        .unwrap()
        .next_rotation_date
        .unwrap()
        .seconds;
    assert!(
        next_after > next + 80 * 86_400,
        "the schedule moves on by a period"
    );
    assert_eq!(
        *c.decrypt(&old, &ctx(&[]), None).await.unwrap().plaintext,
        b"v1"
    );
    assert!(
        kmsd.log().contains("ran the key rotations that fell due"),
        "{}",
        kmsd.log()
    );

    c.disable_key_rotation(&key).await.unwrap();
    assert!(
        !c.get_key_rotation_status(&key)
            .await
            .unwrap()
            .key_rotation_enabled
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_scheduled_for_deletion_is_gone_after_its_date() {
    let env = TestEnv::new().with_token_storage();
    let kmsd = env.start();
    let mut c = kmsd.client().await;
    let doomed = c.create_key("doomed").await.unwrap().key_id;
    let kept = c.create_key("kept").await.unwrap().key_id;
    c.rotate_key_on_demand(&doomed).await.unwrap();
    c.create_alias("alias/doomed", &doomed).await.unwrap();
    let blob = c
        .encrypt(&doomed, b"gone soon", &ctx(&[]))
        .await
        .unwrap()
        .ciphertext_blob;
    let kept_blob = c
        .encrypt(&kept, b"kept", &ctx(&[]))
        .await
        .unwrap()
        .ciphertext_blob;

    expect_error(
        c.schedule_key_deletion(&doomed, Some(6)).await,
        Code::InvalidArgument,
        "ValidationException",
    );
    let scheduled = c.schedule_key_deletion(&doomed, Some(7)).await.unwrap();
    assert_eq!(scheduled.key_state(), pb::KeyState::PendingDeletion);
    assert_eq!(scheduled.pending_window_in_days, 7);
    let described = c.describe_key(&doomed).await.unwrap();
    assert_eq!(described.pending_deletion_window_in_days, Some(7));
    assert!(described.deletion_date.is_some());
    for result in [
        c.encrypt(&doomed, b"x", &ctx(&[])).await.map(drop),
        c.decrypt(&blob, &ctx(&[]), None).await.map(drop),
    ] {
        expect_error(result, Code::FailedPrecondition, "KMSInvalidStateException");
    }
    c.cancel_key_deletion(&doomed).await.unwrap();
    assert_eq!(
        c.describe_key(&doomed).await.unwrap().key_state(),
        pb::KeyState::Disabled
    );
    c.schedule_key_deletion(&doomed, Some(7)).await.unwrap();
    drop(c);
    drop(kmsd);

    // Eight days later, by kmsd's clock: the overdue deletion runs at startup.
    let kmsd = env.start_shifted("+8d");
    let mut c = kmsd.client().await;
    expect_error(
        c.describe_key(&doomed).await,
        Code::NotFound,
        "NotFoundException",
    );
    expect_error(
        c.decrypt(&blob, &ctx(&[]), None).await,
        Code::NotFound,
        "NotFoundException",
    );
    expect_error(
        c.describe_key("alias/doomed").await,
        Code::NotFound,
        "NotFoundException",
    );
    assert!(!c.list_all_keys().await.unwrap().contains(&doomed));
    assert_eq!(
        *c.decrypt(&kept_blob, &ctx(&[]), None)
            .await
            .unwrap()
            .plaintext,
        b"kept"
    );
    assert_eq!(
        env.hsm_key_labels(),
        [format!("kms/{kept}/v1")],
        "only the kept key's object is left"
    );
}

/// What kmsd logs for each key it deletes.
const DELETED: &str = "deleted key and destroyed its HSM objects";

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_deletions_leaves_nothing_behind_after_restart() {
    let env = TestEnv::new().with_token_storage();
    let kmsd = env
        .start_with(&env.bulk_key_args(), &[])
        .unwrap_or_else(|log| panic!("kmsd did not start:\n{log}"));
    let mut c = kmsd.client().await;
    let kept = c.create_key("kept").await.unwrap().key_id;
    let mut doomed = Vec::new();
    for i in 0..40 {
        let key = c.create_key("doomed").await.unwrap().key_id;
        c.create_alias(&format!("alias/doomed-{i}"), &key)
            .await
            .unwrap();
        c.schedule_key_deletion(&key, Some(7)).await.unwrap();
        doomed.push(key);
    }
    drop(c);
    drop(kmsd);

    // Kill kmsd during its startup deletions, 8 days later, at points read from its log: as
    // soon as it has opened the token (not before: a slow machine could kill it while
    // SoftHSM2 rewrites its token file at login, which kill -9 can leave torn and the token
    // unreadable, SoftHSM2's weakness and not what this test is about), then once it has
    // logged a first deletion, then once it has logged a few more.
    let mut runs = Vec::new();
    for kill_after in [0, 1, 5] {
        let mut kmsd = env.spawn_shifted("+8d");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let log = kmsd.log();
            if log.contains("opened the HSM token")
                && (log.matches(DELETED).count() >= kill_after || log.contains("kmsd listening"))
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "kmsd did not get there:\n{log}"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        kmsd.kill9();
        runs.push(kmsd.log().matches(DELETED).count());
    }
    let kmsd = env.start_shifted("+8d");
    let mut c = kmsd.client().await;
    runs.push(kmsd.log().matches(DELETED).count());
    // A kill landed inside the deletions when its kmsd had deleted a key and a later one still
    // found keys to delete.
    let inside = (0..runs.len() - 1)
        .filter(|&i| runs[i] > 0 && runs[i + 1..].iter().sum::<usize>() > 0)
        .count();
    eprintln!("keys deleted by each kmsd, the last one not killed: {runs:?}");
    assert!(
        inside >= 1,
        "no kill landed inside the deletions (keys deleted by each kmsd: {runs:?})"
    );
    assert!(runs.iter().sum::<usize>() <= doomed.len(), "{runs:?}");
    for key in &doomed {
        expect_error(
            c.describe_key(key).await,
            Code::NotFound,
            "NotFoundException",
        );
    }
    assert_eq!(
        c.list_all_keys().await.unwrap(),
        std::slice::from_ref(&kept)
    );
    assert!(c.list_all_aliases(None).await.unwrap().is_empty());
    let (labels, _torn): (Vec<String>, Vec<String>) = env
        .hsm_key_labels()
        .into_iter()
        .partition(|l| !l.is_empty());
    assert_eq!(labels, [format!("kms/{kept}/v1")]);
}
