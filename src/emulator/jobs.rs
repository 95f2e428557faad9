//! Job statuses (docs/zendesk.md, "Bulk writes and job statuses"). Every bulk write is a job that
//! is `queued`, then `working`, then applies its items in order. It ends `completed` with one
//! result per item, or `failed` as a whole (applying nothing). Time is the emulator's clock. A job
//! ends `job_delay_ms` after it was submitted, and due jobs run, in submission order, before the
//! next request is handled (or the state is inspected). At most `job_limit` jobs (Zendesk: 30) may
//! be queued or working; beyond that a bulk request answers `job_limit_status`. Ended jobs are
//! forgotten an hour later (404 `RecordNotFound` then, as at Zendesk).
//!
//! Routes: `GET job_statuses` (the last 100 jobs: those queued or working first, newest first,
//! then the ended ones by when they ended, latest first; cursor pagination with `page[size]` and
//! `page[after]`), `GET job_statuses/{id}` and `GET job_statuses/show_many?ids=a,b`.

use std::collections::VecDeque;
use std::time::Duration;

use indexmap::IndexMap;
use serde_json::{Value, json};

use super::bulk::{self, BulkItem, JobKind};
use super::errors::{ApiError, ApiResult, Reply};
use super::router::{ApiRequest, World, cursor_page};
use super::state::Store;

/// How many jobs the list shows (the most recent).
const LISTED: usize = 100;

/// How long an ended job can still be read.
const ENDED_JOB_TTL: Duration = Duration::from_secs(60 * 60);

/// One bulk job.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    id: String,
    kind: JobKind,
    total: usize,
    /// The items still to apply (emptied when the job runs).
    items: Vec<BulkItem>,
    submitted_at: Duration,
    due_at: Duration,
    /// Drawn at submission (`job_fail_rate`), so runs repeat under the same seed.
    fails: bool,
    outcome: Option<Outcome>,
}

#[derive(Debug, Clone)]
enum Outcome {
    Completed { at: String, results: Vec<Value> },
    Failed { at: String },
}

/// The account's jobs, by id in submission order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Jobs {
    all: IndexMap<String, Job>,
    /// Ids of jobs not yet run, in submission order.
    pending: VecDeque<String>,
    /// (ended at, id), in the order jobs ended: the order they are forgotten in.
    ended: VecDeque<(Duration, String)>,
}

impl Jobs {
    /// Jobs queued or working.
    fn running(&self) -> usize {
        self.pending.len()
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &Job> {
        self.all.values()
    }
}

/// Queues a job of `items` and answers 200 `{"job_status": ...}`, or the configured answer
/// when `job_limit` jobs are already queued or working.
pub(crate) fn submit(w: &mut World, kind: JobKind, items: Vec<BulkItem>) -> ApiResult {
    let knobs = &w.limits.knobs;
    let (limit, limit_status) = (knobs.job_limit, knobs.job_limit_status);
    let delay = Duration::from_millis(knobs.job_delay_ms);
    let fail_rate = knobs.job_fail_rate;
    let s = &mut w.store;
    let now = s.clock.elapsed();
    if s.jobs.running() >= limit as usize {
        let next_end = s
            .jobs
            .pending
            .front()
            .and_then(|id| s.jobs.all.get(id))
            .map_or(Duration::ZERO, |j| j.due_at.saturating_sub(now));
        return Err(too_many_jobs(limit_status, next_end, limit));
    }
    let fails = w.limits.chance(fail_rate);
    let s = &mut w.store;
    let id = s.hex_id();
    let job = Job {
        id: id.clone(),
        kind,
        total: items.len(),
        items,
        submitted_at: now,
        due_at: now + delay,
        fails,
        outcome: None,
    };
    let body = json!({"job_status": render_at(s, &job, now)});
    s.jobs.pending.push_back(id.clone());
    s.jobs.all.insert(id, job);
    Ok(Reply::ok(body))
}

/// The answer beyond the job limit. Most reports say 429, others 403 / 422 `TooManyJobs`
/// (docs/zendesk.md, "Bulk writes and job statuses").
fn too_many_jobs(status: u16, next_end: Duration, limit: u32) -> ApiError {
    let title = format!("Too many jobs: at most {limit} may be queued or running at once");
    if status == 429 {
        let retry_after = next_end.as_secs_f64().ceil().max(1.0) as u64;
        return ApiError(
            Reply::json(
                429,
                json!({"errors": [{"code": "TooManyJobs", "title": title}]}),
            )
            .header("Retry-After", retry_after.to_string()),
        );
    }
    ApiError(Reply::json(
        status,
        json!({"error": "TooManyJobs", "description": title}),
    ))
}

/// Runs the jobs that are due, in submission order, and forgets those ended an hour ago.
pub(crate) fn run_due(s: &mut Store) {
    let now = s.clock.elapsed();
    while let Some(id) = s.jobs.pending.front().cloned() {
        let Some(job) = s.jobs.all.get_mut(&id) else {
            s.jobs.pending.pop_front();
            continue;
        };
        if job.due_at > now {
            break;
        }
        s.jobs.pending.pop_front();
        let (kind, fails, items) = (job.kind, job.fails, std::mem::take(&mut job.items));
        let at = s.now();
        let outcome = if fails {
            Outcome::Failed { at }
        } else {
            let results = items
                .into_iter()
                .enumerate()
                .map(|(index, item)| bulk::apply(s, kind, index, item))
                .collect();
            Outcome::Completed { at, results }
        };
        if let Some(job) = s.jobs.all.get_mut(&id) {
            job.outcome = Some(outcome);
        }
        s.jobs.ended.push_back((now, id));
    }
    while let Some((ended, _)) = s.jobs.ended.front()
        && now.saturating_sub(*ended) >= ENDED_JOB_TTL
    {
        if let Some((_, id)) = s.jobs.ended.pop_front() {
            s.jobs.all.shift_remove(&id);
        }
    }
}

/// A job status as Zendesk renders it, now.
pub(crate) fn render(s: &Store, job: &Job) -> Value {
    render_at(s, job, s.clock.elapsed())
}

/// A job status as of `now` on the emulator's clock.
fn render_at(s: &Store, job: &Job, now: Duration) -> Value {
    let (status, progress, message, results) = match &job.outcome {
        Some(Outcome::Completed { at, results }) => (
            "completed",
            json!(job.total),
            json!(format!("Completed at {at}")),
            json!(results),
        ),
        Some(Outcome::Failed { at }) => (
            "failed",
            json!(0),
            json!(format!("Failed at {at}: the job could not be processed")),
            Value::Null,
        ),
        None => {
            let halfway = job.submitted_at + (job.due_at - job.submitted_at) / 2;
            let status = if now <= halfway { "queued" } else { "working" };
            (status, Value::Null, Value::Null, Value::Null)
        }
    };
    json!({
        "id": job.id,
        "url": s.url("job_statuses", &job.id),
        "job_type": job.kind.job_type(),
        "status": status,
        "total": job.total,
        "progress": progress,
        "message": message,
        "results": results,
    })
}

/// `GET job_statuses/{id}`.
pub(crate) fn show(w: &mut World, id: &str) -> ApiResult {
    let s = &w.store;
    let job = s.jobs.all.get(id).ok_or_else(ApiError::not_found)?;
    Ok(Reply::ok(json!({"job_status": render(s, job)})))
}

/// `GET job_statuses`: the most recent jobs (see the module docs), a page at a time. The cursor
/// is the position after the last job shown.
pub(crate) fn list(w: &mut World, req: &ApiRequest) -> ApiResult {
    let s = &w.store;
    let size = req.page_size()?.unwrap_or(LISTED).min(LISTED);
    let recent: Vec<&Job> = s
        .jobs
        .pending
        .iter()
        .rev()
        .chain(s.jobs.ended.iter().rev().map(|(_, id)| id))
        .filter_map(|id| s.jobs.all.get(id))
        .take(LISTED)
        .collect();
    Ok(cursor_page(
        req,
        "job_statuses",
        "job_statuses",
        &recent,
        size,
        |j| render(s, j),
    ))
}

/// `GET job_statuses/show_many?ids=a,b`: the known ones, in the order asked.
pub(crate) fn show_many(w: &mut World, req: &ApiRequest) -> ApiResult {
    let s = &w.store;
    let ids = req
        .query("ids")
        .ok_or_else(|| ApiError::bad_request("ids is required"))?;
    let statuses: Vec<Value> = ids
        .split(',')
        .filter_map(|id| s.jobs.all.get(id.trim()))
        .map(|job| render(s, job))
        .collect();
    Ok(Reply::ok(json!({"job_statuses": statuses})))
}
