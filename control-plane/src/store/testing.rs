//! Stores for tests: a SQLite file in a temp dir, and (when `DATABASE_URL` is a PostgreSQL URL) a
//! fresh schema in that database, so every test starts empty and tests run in parallel.

use sqlx::Executor;

use super::{Options, Store};

/// Keeps a test's database alive (the temp dir) until dropped.
pub struct Guard {
    _dir: Option<tempfile::TempDir>,
}

pub async fn sqlite() -> (Store, Guard) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("test.db").display());
    let store = Store::connect(&Options::new(url)).await.expect("sqlite store");
    (store, Guard { _dir: Some(dir) })
}

/// A URL of a new, empty schema in the `DATABASE_URL` PostgreSQL database, if there is one.
pub async fn postgres_url() -> Option<String> {
    let base = std::env::var("DATABASE_URL").ok().filter(|u| u.starts_with("postgres"))?;
    sqlx::any::install_default_drivers();
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let pool = sqlx::AnyPool::connect(&base).await.expect("DATABASE_URL is set but PostgreSQL is unreachable");
    pool.execute(format!("CREATE SCHEMA {schema}").as_str()).await.expect("create schema");
    pool.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{sep}options=-c%20search_path%3D{schema}"))
}

pub async fn postgres() -> Option<(Store, Guard)> {
    let url = postgres_url().await?;
    let store = Store::connect(&Options::new(url)).await.expect("postgres store");
    Some((store, Guard { _dir: None }))
}

/// SQLite always, PostgreSQL when configured.
pub async fn stores() -> Vec<(Store, Guard)> {
    let mut all = vec![sqlite().await];
    all.extend(postgres().await);
    all
}
