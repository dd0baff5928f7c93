//! Socket commands: read the frame, call what the REST door calls, and
//! answer with the same `code`/`msg`/`data`. A command reads the session
//! and returns what should change in it; it never reaches into it.

use protocol::{
    AuthRefreshRequest, AuthRefreshResult, DrawRequest, ErrorCode, ExchangeRequest, IncomingFrame,
    PingResult, ReplyFrame, StatusEventFrame, SyncRequest, command, event, frames::is_valid_id,
};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::app::AppState;
use crate::domain::auth::{self, AuthUser};
use crate::domain::{IdemKey, events, exchange, lottery, rfc3339};
use crate::error::{DataJson, Error, Result, parse_object};
use crate::rules::paging::{Count, PageQuery};

/// What a command may read of its socket.
pub struct SessionView<'a> {
    pub state: &'a AppState,
    pub auth: &'a AuthUser,
}

/// What the session should change after a command.
#[derive(Debug)]
pub enum Change {
    /// `auth.refresh`: carry on under these credentials.
    Credentials(AuthUser),
    /// A replay sent user events up to this seq.
    SentUpTo(u64),
}

/// The frames to write, in order, and the change to apply.
pub struct Handled {
    pub frames: Vec<String>,
    pub change: Option<Change>,
}

impl Handled {
    fn frames(frames: Vec<String>) -> Handled {
        Handled {
            frames,
            change: None,
        }
    }
}

/// `exchange.products`: the guest's catalogue, as the REST list.
#[derive(serde::Deserialize)]
struct ProductsRequest {
    category: Option<String>,
    page: Option<Count>,
    page_size: Option<Count>,
}

/// A command's `data`: absent is `{}`; otherwise read exactly as a REST
/// body is (`error::parse_object`), so one problem has one message.
fn parse_data<T: DeserializeOwned>(data: Option<&RawValue>) -> Result<T> {
    parse_object(data.map_or("{}", RawValue::get).as_bytes())
}

pub async fn handle(s: SessionView<'_>, text: &str) -> Handled {
    let frame: IncomingFrame = match serde_json::from_str(text) {
        Ok(f) => f,
        Err(_) => return Handled::frames(vec![error_event(ErrorCode::MalformedFrame)]),
    };
    let id = match read_id(&frame) {
        Ok(id) => id,
        Err(code) => return Handled::frames(vec![error_event(code)]),
    };
    if !is_valid_id(&id) {
        return Handled::frames(vec![reply(&id, Err(Error::Refused(ErrorCode::InvalidId)))]);
    }
    // A type that is missing or not a string names no command.
    let Some(kind) = frame
        .kind
        .and_then(|k| serde_json::from_str::<String>(k.get()).ok())
    else {
        return Handled::frames(vec![reply(
            &id,
            Err(Error::Refused(ErrorCode::UnknownCommand)),
        )]);
    };
    if kind == command::SYNC {
        return match parse_data::<SyncRequest>(frame.data) {
            Ok(req) => sync(&s, &id, req.since).await,
            Err(e) => Handled::frames(vec![reply(&id, Err(e))]),
        };
    }
    let (answer, change) = match run(&s, &kind, &id, frame.data).await {
        Ok((data, change)) => (Ok(data), change),
        Err(e) => (Err(e), None),
    };
    if let Err(e) = &answer {
        log_failure(s.auth, &kind, e);
    }
    Handled {
        frames: vec![reply(&id, answer)],
        change,
    }
}

/// Runs one command; what the REST handlers run.
async fn run(
    s: &SessionView<'_>,
    kind: &str,
    id: &str,
    data: Option<&RawValue>,
) -> Result<(DataJson, Option<Change>)> {
    let state = s.state;
    let user_id = s.auth.user_id;
    let data = match kind {
        command::PING => DataJson::of(&PingResult {
            server_time: rfc3339(chrono::Utc::now()),
        })?,
        command::LOTTERY_DRAW => {
            let req: DrawRequest = parse_data(data)?;
            let key = IdemKey::parse(id)?;
            state.draw(user_id, req.draw_count, Some(&key)).await?
        }
        command::LOTTERY_CONFIG => {
            DataJson::of(&lottery::config_view(&state.db, &state.wheel(), user_id).await?)?
        }
        command::EXCHANGE_SUBMIT => {
            let req: ExchangeRequest = parse_data(data)?;
            let key = IdemKey::parse(id)?;
            state
                .submit_exchange(user_id, req.product_id, req.quantity, Some(&key))
                .await?
        }
        command::EXCHANGE_PRODUCTS => {
            let req: ProductsRequest = parse_data(data)?;
            let page = PageQuery {
                page: req.page,
                page_size: req.page_size,
                limit: None,
            }
            .resolve()?;
            DataJson::of(
                &exchange::products(&state.db, req.category.as_deref(), page, true).await?,
            )?
        }
        command::USER_INFO => DataJson::of(&auth::user_info(&state.db, user_id).await?)?,
        command::AUTH_REFRESH => {
            let req: AuthRefreshRequest = parse_data(data)?;
            return refresh_credentials(s, &req.access_token).await;
        }
        _ => return Err(Error::Refused(ErrorCode::UnknownCommand)),
    };
    Ok((data, None))
}

fn log_failure(auth: &AuthUser, kind: &str, e: &Error) {
    let user_id = auth.user_id.0;
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
pub fn refuse(text: &str, code: ErrorCode) -> String {
    let id = serde_json::from_str::<IncomingFrame>(text)
        .ok()
        .and_then(|f| read_id(&f).ok());
    match id {
        Some(id) => reply(&id, Err(Error::Refused(code))),
        None => error_event(code),
    }
}

pub fn reply(id: &str, answer: Result<DataJson>) -> String {
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
pub fn error_event(code: ErrorCode) -> String {
    serde_json::to_string(&StatusEventFrame::<()> {
        kind: event::ERROR,
        code: code.code(),
        msg: code.msg(),
        data: None,
    })
    .unwrap_or_default()
}

/// `sync`: the missed events as ordinary event frames, then the reply.
async fn sync(s: &SessionView<'_>, id: &str, since: u64) -> Handled {
    let limit = s.state.config.sync_replay_limit;
    match events::replay(&s.state.db, s.auth.user_id, since, limit).await {
        Ok((events, summary)) => {
            let to_seq = summary.to_seq;
            let mut frames: Vec<String> = events.into_iter().map(|(_, f)| f).collect();
            frames.push(reply(id, DataJson::of(&summary)));
            Handled {
                frames,
                change: Some(Change::SentUpTo(to_seq)),
            }
        }
        Err(e) => {
            log_failure(s.auth, command::SYNC, &e);
            Handled::frames(vec![reply(id, Err(e))])
        }
    }
}

/// `?since=` on connect: like `sync`, answered by a `sync_result` event.
/// `last_seq` was read at the upgrade: a client that missed nothing (the
/// common case after a restart) costs no further read.
pub async fn sync_after_connect(s: SessionView<'_>, since: u64, last_seq: u64) -> Handled {
    let limit = s.state.config.sync_replay_limit;
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
        std::cmp::Ordering::Less => events::replay(&s.state.db, s.auth.user_id, since, limit).await,
    };
    let (mut frames, status, change) = match replayed {
        Ok((events, summary)) => {
            let frames: Vec<String> = events.into_iter().map(|(_, f)| f).collect();
            let to = summary.to_seq;
            (frames, Ok(summary), Some(Change::SentUpTo(to)))
        }
        Err(e) => (Vec::new(), Err(e), None),
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
    Handled { frames, change }
}

/// `auth.refresh`: the socket carries on under a newer access token of the
/// same user (a refreshed token may belong to a newer session).
async fn refresh_credentials(
    s: &SessionView<'_>,
    token: &str,
) -> Result<(DataJson, Option<Change>)> {
    let next = auth::authorize(&s.state.keys, &s.state.db, token).await?;
    if next.user_id != s.auth.user_id {
        return Err(Error::Refused(ErrorCode::TokenInvalid));
    }
    let expires_at = chrono::DateTime::from_timestamp(next.expires_at, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    let data = DataJson::of(&AuthRefreshResult {
        user_id: next.user_id,
        expires_at,
    })?;
    Ok((data, Some(Change::Credentials(next))))
}
