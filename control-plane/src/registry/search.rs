//! Listing and searching services, with cursor pagination: services are kept in id order and a page
//! token is the last id of the previous page, so pages stay correct while services come and go.

use reskflow_proto::invalid::Invalid;
use reskflow_proto::registry::{is_valid_id, SearchQuery, ServiceList, TagMatch};

use super::state::{RegistryState, ServiceEntry};

pub const DEFAULT_PAGE_SIZE: u32 = 50;

fn matches(entry: &ServiceEntry, q: &SearchQuery, text: &str) -> bool {
    let s = &entry.service;
    if !text.is_empty() && ![&s.id, &s.name, &s.description].iter().any(|field| field.to_lowercase().contains(text)) {
        return false;
    }
    if !q.tags.is_empty() {
        let has = |t: &String| s.tags.contains(t);
        let ok = match q.tags_match {
            TagMatch::All => q.tags.iter().all(has),
            TagMatch::Any => q.tags.iter().any(has),
        };
        if !ok {
            return false;
        }
    }
    if !q.capabilities.iter().all(|c| s.capabilities.contains(c)) {
        return false;
    }
    // A value of "*" asks only that the key be present.
    if !q.metadata.iter().all(|(k, v)| s.metadata.get(k).is_some_and(|have| v == "*" || have == v)) {
        return false;
    }
    q.health.is_none_or(|want| entry.health().status == want)
}

/// One page of the services that match `query` (an empty query matches all).
pub fn search(state: &RegistryState, query: &SearchQuery) -> Result<ServiceList, Invalid> {
    if !query.page_token.is_empty() && !is_valid_id(&query.page_token) {
        return Err(Invalid::one("pageToken", "is not a token this API returned"));
    }
    let size = query.page_size.unwrap_or(DEFAULT_PAGE_SIZE) as usize;
    let text = query.text.trim().to_lowercase();
    let mut total = 0u32;
    let mut services = Vec::new();
    let mut last_in_page = None;
    let mut more = false;
    for (id, entry) in &state.services {
        if !matches(entry, query, &text) {
            continue;
        }
        total += 1;
        if !query.page_token.is_empty() && id.as_str() <= query.page_token.as_str() {
            continue;
        }
        if services.len() < size {
            services.push(entry.summary());
            last_in_page = Some(id.clone());
        } else {
            more = true;
        }
    }
    let next_page_token = if more { last_in_page.unwrap_or_default() } else { String::new() };
    Ok(ServiceList { services, next_page_token, total })
}
