//! Tags over gRPC and through kmsctl, and the key limit.

use kms_e2e::TestEnv;
use tonic::Code;

use crate::expect_error;

#[tokio::test(flavor = "multi_thread")]
async fn tags_are_set_at_creation_added_removed_and_bounded() {
    let env = TestEnv::new();
    let kmsd = env.start();
    let mut c = kmsd.client().await;
    let key = c
        .create_key_tagged("tagged", &[("team", "payments")])
        .await
        .unwrap()
        .key_id;
    assert_eq!(
        c.list_all_tags(&key).await.unwrap(),
        [("team".to_owned(), "payments".to_owned())]
    );
    c.tag_resource(&key, &[("env", "prod"), ("team", "billing")])
        .await
        .unwrap();
    c.untag_resource(&key, &["env", "not-there"]).await.unwrap();
    assert_eq!(
        c.list_all_tags(&key).await.unwrap(),
        [("team".to_owned(), "billing".to_owned())]
    );

    let many: Vec<(String, String)> = (0..50).map(|i| (format!("t{i}"), String::new())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    expect_error(
        c.tag_resource(&key, &many).await,
        Code::ResourceExhausted,
        "LimitExceededException",
    );
    let long_key = "k".repeat(129);
    expect_error(
        c.tag_resource(&key, &[(long_key.as_str(), "v")]).await,
        Code::InvalidArgument,
        "ValidationException",
    );
    expect_error(
        c.create_key_tagged("bad", &[("", "v")]).await,
        Code::InvalidArgument,
        "ValidationException",
    );
    expect_error(
        c.tag_resource("00000000-0000-4000-8000-000000000000", &[("a", "b")])
            .await,
        Code::NotFound,
        "NotFoundException",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kmsctl_manages_tags() {
    let env = TestEnv::new();
    let kmsd = env.start();
    let out = kmsd.kmsctl(
        &["--output", "json", "create-key", "--tag", "team=payments"],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["key_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let tagged = kmsd.kmsctl(
        &[
            "--output",
            "json",
            "tag-resource",
            "--key-id",
            &key,
            "--tag",
            "env=prod",
        ],
        b"",
    );
    assert!(
        tagged.status.success(),
        "{}",
        String::from_utf8_lossy(&tagged.stderr)
    );
    let tags: serde_json::Value = serde_json::from_slice(&tagged.stdout).unwrap();
    assert_eq!(tags["tags"].as_array().map(Vec::len), Some(2));
    let untagged = kmsd.kmsctl(
        &["untag-resource", "--key-id", &key, "--tag-key", "team"],
        b"",
    );
    assert!(untagged.status.success());
    let listed = kmsd.kmsctl(&["list-resource-tags", "--key-id", &key], b"");
    assert_eq!(String::from_utf8_lossy(&listed.stdout), "env\tprod\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_configured_key_limit_is_enforced() {
    let env = TestEnv::new();
    let mut args = env.kmsd_args();
    args.extend(["--max-keys".to_owned(), "2".to_owned()]);
    let kmsd = env
        .start_with(&args, &[])
        .unwrap_or_else(|log| panic!("{log}"));
    let mut c = kmsd.client().await;
    c.create_key("one").await.unwrap();
    c.create_key("two").await.unwrap();
    expect_error(
        c.create_key("three").await,
        Code::ResourceExhausted,
        "LimitExceededException",
    );
}
