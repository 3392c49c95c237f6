//! One suite for the store, run on SQLite (a temp file) and, when `DATABASE_URL` points at
//! PostgreSQL, on PostgreSQL too (each test in a schema of its own, so tests run in parallel).

use std::time::Duration;

use reskflow_proto::registry::{Change, Instance, Service};

use super::testing::stores;
use super::*;

fn service(id: &str) -> Service {
    let mut s: Service = serde_json::from_value(serde_json::json!({ "id": id })).unwrap();
    s.normalize().unwrap();
    s
}

fn instance(id: &str, service_id: &str) -> Instance {
    let mut i: Instance = serde_json::from_value(serde_json::json!({
        "id": id, "serviceId": service_id, "address": "127.0.0.1", "port": 8080
    }))
    .unwrap();
    i.normalize(None).unwrap();
    i
}

#[tokio::test]
async fn a_service_id_can_be_registered_once() {
    for (store, _guard) in stores().await {
        store.apply(Mutation::CreateService(service("orders"))).await.unwrap();
        let err = store.apply(Mutation::CreateService(service("orders"))).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{:?}: {err}", store.backend());
    }
}

#[tokio::test]
async fn an_instance_of_an_unknown_service_is_refused_and_nothing_is_written() {
    for (store, _guard) in stores().await {
        let err = store.apply(Mutation::CreateInstance(instance("i1", "ghost"))).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound { kind: "service", .. }), "{err}");
        let Snapshot { services, instances, version, .. } = store.load_registry().await.expect("test input is valid");
        assert!(services.is_empty() && instances.is_empty());
        assert_eq!(version, 0);
    }
}

#[tokio::test]
async fn changes_come_back_in_version_order_and_match_the_tables() {
    for (store, _guard) in stores().await {
        let mut seqs = Vec::new();
        for m in [
            Mutation::CreateService(service("orders")),
            Mutation::CreateInstance(instance("o1", "orders")),
            Mutation::CreateInstance(instance("o2", "orders")),
            Mutation::DeleteInstance("o1".into()),
        ] {
            seqs.extend(store.apply(m).await.unwrap().into_iter().map(|r| r.seq));
        }
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        let log = store.changes_since(0, 100).await.unwrap();
        assert_eq!(log.iter().map(|r| r.seq).collect::<Vec<_>>(), seqs);
        assert!(matches!(&log[3].change, Change::InstanceDeleted(i) if i.id == "o1"));
        let tail = store.changes_since(seqs[1], 100).await.unwrap();
        assert_eq!(tail.len(), 2);

        let Snapshot { services, instances, version, .. } = store.load_registry().await.expect("test input is valid");
        assert_eq!(services.len(), 1);
        assert_eq!(instances.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["o2"]);
        assert_eq!(version, *seqs.last().unwrap());
        assert!(instances[0].registered_at.is_some());
    }
}

#[tokio::test]
async fn deleting_a_service_removes_its_instances_in_the_same_version_range() {
    for (store, _guard) in stores().await {
        store.apply(Mutation::CreateService(service("orders"))).await.unwrap();
        store.apply(Mutation::CreateInstance(instance("o1", "orders"))).await.unwrap();
        store.apply(Mutation::CreateInstance(instance("o2", "orders"))).await.unwrap();
        let records = store.apply(Mutation::DeleteService("orders".into())).await.unwrap();
        assert_eq!(records.len(), 3);
        assert!(matches!(&records[2].change, Change::ServiceDeleted(id) if id == "orders"));
        let Snapshot { services, instances, .. } = store.load_registry().await.expect("test input is valid");
        assert!(services.is_empty() && instances.is_empty());
        let err = store.apply(Mutation::DeleteService("orders".into())).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }));
    }
}

#[tokio::test]
async fn replacing_a_service_keeps_its_creation_time() {
    for (store, _guard) in stores().await {
        let created = store.apply(Mutation::CreateService(service("orders"))).await.unwrap();
        let Change::ServiceUpserted(first) = &created[0].change else { panic!() };
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut next = service("orders");
        next.description = "v2".into();
        let replaced = store.apply(Mutation::ReplaceService(next)).await.unwrap();
        let Change::ServiceUpserted(second) = &replaced[0].change else { panic!() };
        assert_eq!(second.created_at, first.created_at);
        assert!(second.updated_at > first.updated_at);
        let err = store.apply(Mutation::ReplaceService(service("ghost"))).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }));
    }
}

#[tokio::test]
async fn one_holder_owns_a_lease_until_it_expires_or_is_released() {
    for (store, _guard) in stores().await {
        let ttl = Duration::from_millis(200);
        assert!(store.try_acquire_lease("checks", "a", ttl).await.unwrap());
        assert!(!store.try_acquire_lease("checks", "b", ttl).await.unwrap());
        assert!(store.try_acquire_lease("checks", "a", ttl).await.unwrap(), "renewal");
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(store.try_acquire_lease("checks", "b", ttl).await.unwrap(), "takeover after expiry");
        store.release_lease("checks", "b").await.unwrap();
        assert!(store.try_acquire_lease("checks", "a", ttl).await.unwrap(), "after release");
    }
}

#[tokio::test]
async fn heartbeats_are_recorded_per_instance() {
    for (store, _guard) in stores().await {
        store.apply(Mutation::CreateService(service("orders"))).await.unwrap();
        store.apply(Mutation::CreateInstance(instance("o1", "orders"))).await.unwrap();
        assert!(store.record_heartbeat("o1", 42).await.unwrap());
        assert!(!store.record_heartbeat("ghost", 42).await.unwrap());
        assert_eq!(store.heartbeats().await.unwrap().get("o1"), Some(&42));
    }
}

#[tokio::test]
async fn compaction_keeps_the_newest_changes_and_remembers_where_it_cut() {
    for (store, _guard) in stores().await {
        store.apply(Mutation::CreateService(service("orders"))).await.unwrap();
        for n in 0..5 {
            store.apply(Mutation::CreateInstance(instance(&format!("o{n}"), "orders"))).await.unwrap();
        }
        let all = store.changes_since(0, 100).await.unwrap();
        assert_eq!(store.compact_changes(2).await.unwrap(), 4);
        let left = store.changes_since(0, 100).await.unwrap();
        assert_eq!(left, all[4..].to_vec());
        assert_eq!(store.compacted_through().await.unwrap(), all[3].seq);
        let version = store.load_registry().await.expect("test input is valid").version;
        assert_eq!(version, all[5].seq);
    }
}

#[test]
fn sqlite_urls_are_normalized() {
    assert_eq!(normalize_url("sqlite:data.db").unwrap(), (Backend::Sqlite, "sqlite://data.db?mode=rwc".into()));
    assert_eq!(normalize_url("sqlite://x.db?mode=ro").unwrap().1, "sqlite://x.db?mode=ro");
    assert!(normalize_url("mysql://x").is_err());
    assert!(normalize_url("sqlite:").is_err());
}

// === workflows ===

fn row(id: &str, key: Option<&str>) -> InstanceRow {
    InstanceRow {
        id: id.into(),
        workflow_id: "order".into(),
        version: 1,
        status: "RUNNING".into(),
        run: "{}".into(),
        idempotency_key: key.map(String::from),
        created_at_ms: now_ms(),
        updated_at_ms: now_ms(),
        deadline_ms: 0,
    }
}

fn step_task(step: usize) -> NewTask {
    NewTask { kind: TaskKind::Step, step, attempt: 1, run_at_ms: 0, hold_ms: 0 }
}

#[tokio::test]
async fn definition_versions_count_up_per_id() {
    for (store, _guard) in stores().await {
        assert_eq!(store.put_definition("order", "Order", "{\"v\":1}").await.unwrap(), 1);
        assert_eq!(store.put_definition("order", "Order", "{\"v\":2}").await.unwrap(), 2);
        assert_eq!(store.put_definition("mail", "Mail", "{}").await.unwrap(), 1);
        assert_eq!(store.definition("order", None).await.unwrap().unwrap().body, "{\"v\":2}");
        assert_eq!(store.definition("order", Some(1)).await.unwrap().unwrap().body, "{\"v\":1}");
        assert!(store.definition("order", Some(9)).await.unwrap().is_none());
        let latest: Vec<_> =
            store.list_definitions("", 10).await.unwrap().into_iter().map(|d| (d.id, d.version)).collect();
        assert_eq!(latest, [("mail".to_string(), 1), ("order".to_string(), 2)]);
        let first: Vec<_> = store.list_definitions("", 1).await.unwrap().into_iter().map(|d| d.id).collect();
        assert_eq!(first, ["mail"]);
        let rest: Vec<_> = store.list_definitions("mail", 1).await.unwrap().into_iter().map(|d| d.id).collect();
        assert_eq!(rest, ["order"]);
    }
}

#[tokio::test]
async fn the_same_idempotency_key_returns_the_same_run() {
    for (store, _guard) in stores().await {
        store.put_definition("order", "Order", "{}").await.unwrap();
        let (id, created) =
            store.create_instance(&row("r1", Some("k")), &["{}".into()], &[step_task(0)]).await.unwrap();
        assert_eq!((id.as_str(), created), ("r1", true));
        let (id, created) =
            store.create_instance(&row("r2", Some("k")), &["{}".into()], &[step_task(0)]).await.unwrap();
        assert_eq!((id.as_str(), created), ("r1", false), "{:?}", store.backend());
        assert!(store.instance("r2").await.unwrap().is_none(), "nothing of the duplicate was written");
        let (_, created) = store.create_instance(&row("r3", None), &[], &[]).await.unwrap();
        assert!(created);

        // In one batch: a new key used twice is one run; a known key answers the known run.
        let new =
            |id: &str, key: &str| NewInstance { row: row(id, Some(key)), history: vec!["{}".into()], tasks: vec![] };
        let results = store.create_instances(&[new("r4", "k2"), new("r5", "k2"), new("r6", "k")]).await.unwrap();
        let results: Vec<_> = results.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(results, [("r4".into(), true), ("r4".into(), false), ("r1".into(), false)], "{:?}", store.backend());
        assert_eq!(store.history("r4").await.unwrap().len(), 1);
    }
}

#[tokio::test]
async fn a_task_is_held_by_one_worker_until_its_lease_runs_out() {
    for (store, _guard) in stores().await {
        store.put_definition("order", "Order", "{}").await.unwrap();
        store.create_instance(&row("r1", None), &[], &[step_task(0)]).await.unwrap();
        let short = Duration::from_millis(150);
        let a = store.claim_tasks("a", short, 10).await.unwrap();
        assert_eq!(a.len(), 1);
        assert!(store.claim_tasks("b", short, 10).await.unwrap().is_empty());
        tokio::time::sleep(Duration::from_millis(200)).await;
        let b = store.claim_tasks("b", short, 10).await.unwrap();
        assert_eq!(b.iter().map(|t| t.id).collect::<Vec<_>>(), [a[0].id], "taken over after the lease ran out");

        // The first worker wakes up and tries to commit: nothing is written.
        let lost = store
            .transition("r1", Some((a[0].id, "a")), false, |_| {
                Ok(Some(Transition { status: "COMPLETED".into(), run: "{\"by\":\"a\"}".into(), ..Default::default() }))
            })
            .await
            .expect("test input is valid");
        assert_eq!(lost, Committed::LeaseLost);
        assert_eq!(store.instance("r1").await.unwrap().unwrap().run, "{}");

        let done = store
            .transition("r1", Some((b[0].id, "b")), false, |stored| {
                assert_eq!((stored.status, stored.run), ("RUNNING", "{}"));
                Ok(Some(Transition {
                    status: "RUNNING".into(),
                    run: "{\"by\":\"b\"}".into(),
                    history: vec!["{\"type\":\"stepCompleted\"}".into()],
                    tasks: vec![step_task(1)],
                    finished: false,
                }))
            })
            .await
            .expect("test input is valid");
        assert_eq!(done, Committed::Done);
        assert_eq!(store.history("r1").await.unwrap().len(), 1);
        let next = store.claim_tasks("b", short, 10).await.unwrap();
        assert_eq!(next.iter().map(|t| t.step).collect::<Vec<_>>(), [1]);
    }
}

#[tokio::test]
async fn a_finished_run_drops_its_remaining_tasks_and_a_restart_frees_its_leases() {
    for (store, _guard) in stores().await {
        store.put_definition("order", "Order", "{}").await.unwrap();
        let deadline =
            NewTask { kind: TaskKind::Deadline, step: 0, attempt: 0, run_at_ms: now_ms() + 60_000, hold_ms: 0 };
        store.create_instance(&row("r1", None), &[], &[step_task(0), deadline]).await.unwrap();
        let claimed = store.claim_tasks("a", Duration::from_secs(60), 10).await.unwrap();
        assert_eq!(claimed.len(), 1, "the deadline is not due");
        assert_eq!(store.release_leases(Some("a")).await.unwrap(), 1);
        let again = store.claim_tasks("a2", Duration::from_secs(60), 10).await.unwrap();
        assert_eq!(again.len(), 1);
        store
            .transition("r1", Some((again[0].id, "a2")), false, |_| {
                Ok(Some(Transition {
                    status: "COMPLETED".into(),
                    run: "{}".into(),
                    finished: true,
                    ..Default::default()
                }))
            })
            .await
            .expect("test input is valid");
        assert_eq!(store.next_task_due_ms().await.unwrap(), None, "the deadline task went with the run");
        let page = store.list_instances("order", Some("COMPLETED"), None, 10).await.unwrap();
        assert_eq!(page.len(), 1);
        assert!(store.list_instances("order", Some("FAILED"), None, 10).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn withdrawing_waiting_calls_spares_the_one_a_worker_holds() {
    for (store, _guard) in stores().await {
        store.put_definition("order", "Order", "{}").await.unwrap();
        store.create_instance(&row("held", None), &[], &[step_task(0)]).await.unwrap();
        let later = NewTask { kind: TaskKind::Step, step: 1, attempt: 2, run_at_ms: now_ms() + 60_000, hold_ms: 0 };
        store.create_instance(&row("waiting", None), &[], &[later]).await.unwrap();
        assert_eq!(store.claim_tasks("w", Duration::from_secs(60), 10).await.unwrap().len(), 1);
        for (id, withdrawn) in [("held", false), ("waiting", true)] {
            let mut seen = None;
            store
                .transition(id, None, true, |stored| {
                    seen = Some(stored.withdrew_call);
                    Ok(None)
                })
                .await
                .expect("test input is valid");
            assert_eq!(seen, Some(withdrawn), "{id}");
        }
        assert_eq!(store.next_task_due_ms().await.unwrap(), None, "the waiting retry is gone");
    }
}

#[tokio::test]
async fn a_batch_commits_many_runs_in_order_and_each_commit_fails_alone() {
    for (store, _guard) in stores().await {
        store.put_definition("order", "Order", "{}").await.unwrap();
        for id in ["r1", "r2", "r3"] {
            store.create_instance(&row(id, None), &["{\"type\":\"started\"}".into()], &[step_task(0)]).await.unwrap();
        }
        let tasks = store.claim_tasks("w", Duration::from_secs(60), 10).await.unwrap();
        assert_eq!(tasks.len(), 3);
        let task_of = |id: &str| tasks.iter().find(|t| t.instance_id == id).map(|t| t.id);
        let step = |n: usize, run: &'static str| {
            move |stored: Stored<'_>| {
                Ok(Some(Transition {
                    status: "RUNNING".into(),
                    run: format!("{}+{run}", stored.run),
                    history: vec![format!("{{\"n\":{n}}}")],
                    tasks: vec![step_task(n)],
                    finished: false,
                }))
            }
        };
        let commits = vec![
            Commit {
                instance_id: "r1".into(),
                task: task_of("r1"),
                withdraw_waiting_calls: false,
                apply: Box::new(step(1, "a")),
            },
            // A second commit of the same run in the batch sees the first one's state.
            Commit {
                instance_id: "r1".into(),
                task: None,
                withdraw_waiting_calls: false,
                apply: Box::new(step(2, "b")),
            },
            // An unreadable run fails alone, and its task stays held.
            Commit {
                instance_id: "r2".into(),
                task: task_of("r2"),
                withdraw_waiting_calls: false,
                apply: Box::new(|_| Err(StoreError::Corrupt { what: "run r2".into(), why: "test".into() })),
            },
            Commit {
                instance_id: "r3".into(),
                task: Some(-1),
                withdraw_waiting_calls: false,
                apply: Box::new(step(1, "lost")),
            },
            Commit {
                instance_id: "gone".into(),
                task: None,
                withdraw_waiting_calls: false,
                apply: Box::new(step(1, "x")),
            },
            Commit {
                instance_id: "r3".into(),
                task: task_of("r3"),
                withdraw_waiting_calls: false,
                apply: Box::new(|_| {
                    Ok(Some(Transition {
                        status: "COMPLETED".into(),
                        run: "{}".into(),
                        finished: true,
                        ..Default::default()
                    }))
                }),
            },
        ];
        let results = store.commit_batch("w", commits).await.unwrap();
        let summary: Vec<String> = results
            .iter()
            .map(|r| match r {
                Ok(c) => format!("{c:?}"),
                Err(StoreError::Corrupt { .. }) => "Corrupt".into(),
                Err(StoreError::NotFound { .. }) => "NotFound".into(),
                Err(e) => e.to_string(),
            })
            .collect();
        assert_eq!(summary, ["Done", "Done", "Corrupt", "LeaseLost", "NotFound", "Done"], "{:?}", store.backend());

        let r1 = store.instance("r1").await.unwrap().unwrap();
        assert_eq!(r1.run, "{}+a+b");
        let seqs: Vec<String> = store.history("r1").await.unwrap().into_iter().map(|(_, body)| body).collect();
        assert_eq!(seqs, ["{\"type\":\"started\"}", "{\"n\":1}", "{\"n\":2}"]);
        assert_eq!(store.instance("r2").await.unwrap().unwrap().run, "{}", "nothing written for r2");
        assert_eq!(store.instance("r3").await.unwrap().unwrap().status, "COMPLETED");

        // r1's two new tasks are due; r2's task is still held by w; r3 has none left.
        let next = store.claim_tasks("w2", Duration::from_secs(60), 10).await.unwrap();
        let mut next: Vec<_> = next.iter().map(|t| (t.instance_id.as_str(), t.step)).collect();
        next.sort();
        assert_eq!(next, [("r1", 1), ("r1", 2)]);
        let r2 = store.transition("r2", task_of("r2").map(|id| (id, "w")), false, |_| Ok(None)).await.unwrap();
        assert_eq!(r2, Committed::Done, "r2's task was kept for a retry");
    }
}

#[tokio::test]
async fn a_claim_holds_each_task_for_its_own_call_timeout_beyond_the_lease() {
    for (store, _guard) in stores().await {
        store.put_definition("order", "Order", "{}").await.unwrap();
        let long = NewTask { hold_ms: 60_000, ..step_task(0) };
        store.create_instance(&row("slow", None), &[], &[long]).await.unwrap();
        store.create_instance(&row("fast", None), &[], &[step_task(0)]).await.unwrap();
        let short = Duration::from_millis(100);
        assert_eq!(store.claim_tasks("a", short, 10).await.unwrap().len(), 2);
        tokio::time::sleep(Duration::from_millis(150)).await;
        let taken: Vec<_> =
            store.claim_tasks("b", short, 10).await.unwrap().into_iter().map(|t| t.instance_id).collect();
        assert_eq!(taken, ["fast"], "the slow call's task is still held");
        let rows = store.instances(&["slow", "fast", "none"]).await.unwrap();
        assert_eq!(rows.len(), 2);
    }
}
