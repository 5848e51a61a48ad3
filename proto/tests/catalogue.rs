//! docs/events.md is the catalogue generated from the descriptors: this
//! fails when they differ (`SLUICE_BLESS=1` rewrites the page).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn docs_events_md_matches_the_descriptors() {
    let generated = sluice_proto::catalogue::markdown().unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/events.md");
    if std::env::var_os("SLUICE_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "docs/events.md is out of date with the .proto files and catalogue::FLOWS; \
         run `SLUICE_BLESS=1 cargo test -p sluice-proto --test catalogue`"
    );
}

#[test]
fn every_subject_has_a_type_and_every_type_decodes() {
    let registry = sluice_proto::Registry::global().unwrap();
    for e in sluice_proto::catalogue::catalogue().unwrap() {
        assert!(
            registry.message(&e.type_name).is_ok(),
            "{} is not in the registry",
            e.type_name
        );
    }
}
