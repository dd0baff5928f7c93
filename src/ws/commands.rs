//! Socket commands: parse the frame, call the same domain function as the
//! REST door, and answer with the same `code`/`msg`/`data`.

use futures::{Sink, Stream};
use protocol::{
    AuthRefreshRequest, AuthRefreshResult, DrawRequest, ErrorCode, ExchangeRequest, IncomingFrame,
    PingResult, ReplyFrame, StatusEventFrame, SyncRequest, command, event, frames::is_valid_id,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use std::sync::atomic::Ordering;

use super::session::Session;
use crate::domain::{self, DataJson, IdemKey, PageQuery, auth, exchange, lottery, now_rfc3339};
use crate::error::{Error, Result};
use axum::extract::ws::Message;

/// `exchange.products`: the guest's catalogue, as the REST list.
#[derive(serde::Deserialize)]
struct ProductsRequest {
    category: Option<String>,
    page: Option<u32>,
    page_size: Option<u32>,
}

/// What a command answers: JSON text for `data`.
type Answer = Result<DataJson>;

fn json<T: Serialize>(v: &T) -> Answer {
    serde_json::to_string(v)
        .map(DataJson)
        .map_err(|e| Error::internal(ErrorCode::Internal, e))
}

fn parse_data<T: DeserializeOwned>(data: Option<&RawValue>) -> Result<T> {
    let text = data.map(RawValue::get).unwrap_or("{}");
    serde_json::from_str(text).map_err(|e| Error::Invalid(format!("data: {e}")))
}

pub(super) async fn handle<S>(s: &mut Session<S>, text: &str) -> Vec<String>
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
{
    let frame: IncomingFrame = match serde_json::from_str(text) {
        Ok(f) => f,
        Err(_) => return vec![error_event(ErrorCode::MalformedFrame)],
    };
    let id = match read_id(&frame) {
        Ok(id) => id,
        Err(code) => return vec![error_event(code)],
    };
    if !is_valid_id(&id) {
        return vec![reply(&id, Err(Error::Refused(ErrorCode::InvalidId)))];
    }
    let Some(kind) = frame.kind.as_deref() else {
        return vec![reply(&id, Err(Error::Refused(ErrorCode::UnknownCommand)))];
    };
    if kind == command::SYNC {
        return match parse_data::<SyncRequest>(frame.data) {
            Ok(req) => sync(s, &id, req.since).await,
            Err(e) => vec![reply(&id, Err(e))],
        };
    }
    let answer = run(s, kind, &id, frame.data).await;
    if let Err(e) = &answer {
        log_failure(s.auth.user_id, kind, e);
    }
    vec![reply(&id, answer)]
}

/// Runs one command; the same domain functions as the REST handlers.
async fn run<S>(s: &mut Session<S>, kind: &str, id: &str, data: Option<&RawValue>) -> Answer
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
{
    let state = s.state.clone();
    let user_id = s.auth.user_id;
    match kind {
        command::PING => json(&PingResult {
            server_time: now_rfc3339(),
        }),
        command::LOTTERY_DRAW => {
            let req: DrawRequest = parse_data(data)?;
            let key = IdemKey::parse(id)?;
            lottery::draw(&state, user_id, req.draw_count, Some(&key)).await
        }
        command::LOTTERY_CONFIG => json(&lottery::config_view(&state, user_id).await?),
        command::EXCHANGE_SUBMIT => {
            let req: ExchangeRequest = parse_data(data)?;
            let key = IdemKey::parse(id)?;
            exchange::submit(&state, user_id, req.product_id, req.quantity, Some(&key)).await
        }
        command::EXCHANGE_PRODUCTS => {
            let req: ProductsRequest = parse_data(data)?;
            let page = PageQuery {
                page: req.page,
                page_size: req.page_size,
                limit: None,
            }
            .resolve()?;
            json(&exchange::products(&state, req.category.as_deref(), page, true).await?)
        }
        command::USER_INFO => {
            let user = crate::store::users::find(&state.db, user_id)
                .await?
                .ok_or(Error::Refused(ErrorCode::TokenInvalid))?;
            json(&auth::user_info(&user))
        }
        command::AUTH_REFRESH => {
            let req: AuthRefreshRequest = parse_data(data)?;
            refresh_credentials(s, &req.access_token).await
        }
        _ => Err(Error::Refused(ErrorCode::UnknownCommand)),
    }
}

fn log_failure(user_id: u64, kind: &str, e: &Error) {
    match e.internal_cause() {
        Some(cause) => {
            tracing::error!(user_id, command = kind, code = e.code().code(), %cause, "command failed")
        }
        None => tracing::debug!(
            user_id,
            command = kind,
            code = e.code().code(),
            "command refused"
        ),
    }
}

/// The id as a string, or why it cannot be read.
fn read_id(frame: &IncomingFrame) -> std::result::Result<String, ErrorCode> {
    match frame.id {
        None => Err(ErrorCode::MissingId),
        Some(raw) => serde_json::from_str::<String>(raw.get()).map_err(|_| ErrorCode::InvalidId),
    }
}

/// Answers a frame that will not be run (rate limited) in the right shape.
pub(super) fn refuse(text: &str, code: ErrorCode) -> String {
    let id = serde_json::from_str::<IncomingFrame>(text)
        .ok()
        .and_then(|f| read_id(&f).ok());
    match id {
        Some(id) => reply(&id, Err(Error::Refused(code))),
        None => error_event(code),
    }
}

pub(super) fn reply(id: &str, answer: Answer) -> String {
    let text = match answer {
        Ok(DataJson(data)) => {
            let data = RawValue::from_string(data).ok();
            serde_json::to_string(&ReplyFrame {
                id,
                kind: "reply",
                code: 0,
                msg: "success",
                data,
            })
        }
        Err(e) => {
            let data = Some(e.data()).filter(|d| !d.is_null());
            serde_json::to_string(&ReplyFrame {
                id,
                kind: "reply",
                code: e.code().code(),
                msg: &e.msg(),
                data,
            })
        }
    };
    text.unwrap_or_default()
}

/// `{"type":"error","code","msg","data":null}` for a frame without a readable id.
pub(super) fn error_event(code: ErrorCode) -> String {
    serde_json::to_string(&StatusEventFrame::<()> {
        kind: event::ERROR,
        code: code.code(),
        msg: code.msg(),
        data: None,
    })
    .unwrap_or_default()
}

/// `sync`: the missed events as ordinary event frames, then the reply.
async fn sync<S>(s: &mut Session<S>, id: &str, since: u64) -> Vec<String>
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
{
    match domain::events::replay(&s.state, s.auth.user_id, since).await {
        Ok((events, summary)) => {
            s.last_sent_seq = s.last_sent_seq.max(summary.to_seq);
            let mut frames: Vec<String> = events.into_iter().map(|(_, f)| f).collect();
            frames.push(reply(id, json(&summary)));
            frames
        }
        Err(e) => {
            log_failure(s.auth.user_id, command::SYNC, &e);
            vec![reply(id, Err(e))]
        }
    }
}

/// `?since=` on connect: like `sync`, answered by a `sync_result` event.
/// `last_seq` was read at the upgrade: a client that missed nothing (the
/// common case after a restart) costs no further read.
pub(super) async fn sync_after_connect<S>(
    s: &mut Session<S>,
    since: u64,
    last_seq: u64,
) -> Vec<String>
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
{
    let replayed = match since.cmp(&last_seq) {
        std::cmp::Ordering::Equal => Ok((
            Vec::new(),
            protocol::SyncResult {
                from_seq: since + 1,
                to_seq: since,
                count: 0,
            },
        )),
        std::cmp::Ordering::Greater => Err(Error::SyncTooOld { last_seq }),
        std::cmp::Ordering::Less => domain::events::replay(&s.state, s.auth.user_id, since).await,
    };
    let (mut frames, status) = match replayed {
        Ok((events, summary)) => {
            s.last_sent_seq = s.last_sent_seq.max(summary.to_seq);
            let frames: Vec<String> = events.into_iter().map(|(_, f)| f).collect();
            (frames, Ok(summary))
        }
        Err(e) => (Vec::new(), Err(e)),
    };
    let text = match status {
        Ok(summary) => serde_json::to_string(&StatusEventFrame {
            kind: event::SYNC_RESULT,
            code: 0,
            msg: "success",
            data: Some(summary),
        }),
        Err(e) => serde_json::to_string(&StatusEventFrame {
            kind: event::SYNC_RESULT,
            code: e.code().code(),
            msg: &e.msg(),
            data: Some(e.data()),
        }),
    };
    frames.push(text.unwrap_or_default());
    frames
}

/// `auth.refresh`: the socket carries on under a newer access token of the
/// same user (a refreshed token may belong to a newer session).
async fn refresh_credentials<S>(s: &mut Session<S>, token: &str) -> Answer
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
{
    let next = auth::authorize(&s.state, token).await?;
    if next.user_id != s.auth.user_id {
        return Err(Error::Refused(ErrorCode::TokenInvalid));
    }
    s.reg
        .conn
        .session_id
        .store(next.session_id, Ordering::Relaxed);
    let expires_at = chrono::DateTime::from_timestamp(next.expires_at, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    s.auth = next;
    json(&AuthRefreshResult {
        user_id: s.auth.user_id,
        expires_at,
    })
}
