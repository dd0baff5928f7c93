//! The prize wheel as a command: configuration, draws and records.

use chrono::{Duration as ChronoDuration, Utc};
use protocol::{
    DrawItem, DrawRecord, DrawRecords, DrawResult, ErrorCode, LotteryConfigView, Money, PityView,
    PrizeView, Probability,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use sqlx::MySqlPool;
use std::sync::atomic::Ordering;
use tracing::instrument;

use super::points::{Account, UserEvent, source};
use super::wheel::{DRAW_COUNTS, Prize, PrizeType, WheelConfig};
use super::{DataJson, IdemKey, Page, stored_result, to_rfc3339, with_deadlock_retry};
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::store::{self, Tx};

/// Reads the active wheel from the database and validates it. An invalid
/// wheel does not stop the server: draws answer 3003 and `/health` reports
/// it, so logins, exchange and reviews keep working.
pub async fn load_wheel(db: &MySqlPool) -> sqlx::Result<Result<WheelConfig, String>> {
    let (settings, rows) = store::lottery::load(db).await?;
    let Some(settings) = settings else {
        return Ok(Err("lottery_settings has no row".into()));
    };
    let mut prizes = Vec::with_capacity(rows.len());
    for r in rows {
        let Some(prize_type) = PrizeType::parse(&r.prize_type) else {
            return Ok(Err(format!(
                "prize {} has unknown type {}",
                r.prize_id, r.prize_type
            )));
        };
        prizes.push(Prize {
            prize_id: r.prize_id as u64,
            prize_name: r.prize_name,
            prize_type,
            value_cents: r.value_cents,
            angle: r.angle,
            color: r.color,
            weight: r.weight.clamp(0, u32::MAX as i64) as u32,
            is_activity: r.is_activity,
            is_valuable: r.is_valuable,
            limited: r.limited,
        });
    }
    let wheel = WheelConfig {
        version: settings.version,
        cost_points: settings.cost_points as i64,
        pity_threshold: settings.pity_threshold,
        daily_limit: settings.daily_limit,
        prizes,
    };
    Ok(wheel.validate().map(|()| wheel))
}

fn active_wheel(state: &AppState) -> Result<std::sync::Arc<Result<WheelConfig, String>>> {
    let wheel = state.wheel();
    if wheel.is_err() {
        return Err(Error::Refused(ErrorCode::LotteryUnavailable));
    }
    Ok(wheel)
}

pub async fn config_view(state: &AppState, user_id: u64) -> Result<LotteryConfigView> {
    let wheel = active_wheel(state)?;
    let wheel = wheel.as_ref().as_ref().expect("checked by active_wheel");
    let current = store::users::pity_count(&state.db, user_id).await?;
    Ok(LotteryConfigView {
        cost_points: wheel.cost_points,
        prizes: wheel
            .prizes
            .iter()
            .map(|p| PrizeView {
                prize_id: p.prize_id,
                prize_name: p.prize_name.clone(),
                prize_type: p.prize_type.as_str().into(),
                prize_value: Money(p.value_cents),
                angle: p.angle,
                color: p.color.clone(),
                probability: Probability(p.weight),
                is_activity: p.is_activity,
            })
            .collect(),
        draw_counts: DRAW_COUNTS.to_vec(),
        daily_limit: wheel.daily_limit,
        pity: PityView {
            threshold: wheel.pity_threshold,
            current: current.min(wheel.pity_threshold),
        },
    })
}

/// What a stored result must match for a retried key to replay it.
fn fingerprint(draw_count: u32) -> String {
    format!("lottery.draw:{draw_count}")
}

/// Draws `draw_count` prizes in one transaction.
///
/// Invariants the transaction protects:
/// - the user's row is locked first, so a user's draws (and every other
///   points change) run one at a time: the balance never goes below zero,
///   the ledger sums to the balance and event `seq`s have no gaps;
/// - a key is stored with the result in the same transaction, and looked
///   up under the same lock, so a retried key replays and charges nothing;
/// - limited prize stock is taken with a conditional update, so it never
///   goes below zero; a prize out of stock becomes the fallback prize.
#[instrument(skip_all, fields(user_id, draw_count))]
pub async fn draw(
    state: &AppState,
    user_id: u64,
    draw_count: u32,
    key: Option<&IdemKey>,
) -> Result<DataJson> {
    if !DRAW_COUNTS.contains(&draw_count) {
        return Err(Error::Refused(ErrorCode::InvalidDrawCount));
    }
    let wheel = active_wheel(state)?;
    let wheel = wheel.as_ref().as_ref().expect("checked by active_wheel");

    // Two draws that take the same limited prizes in opposite orders can
    // deadlock; InnoDB rolls one back whole, and it simply runs again.
    let drawn = with_deadlock_retry(|| async {
        let mut tx = state.db.begin().await?;
        let drawn = draw_in(state, &mut tx, wheel, user_id, draw_count, key).await?;
        if matches!(drawn, Drawn::Fresh(..)) {
            tx.commit().await?;
        }
        Ok(drawn)
    })
    .await
    .map_err(|e| e.during(ErrorCode::DrawFailed))?;
    match drawn {
        Drawn::Fresh(data, events) => {
            state
                .metrics
                .draws
                .fetch_add(draw_count as u64, Ordering::Relaxed);
            state.hub.deliver(&events);
            Ok(data)
        }
        Drawn::Replayed(data) => Ok(data),
    }
}

enum Drawn {
    Fresh(DataJson, Vec<UserEvent>),
    Replayed(DataJson),
}

async fn draw_in(
    state: &AppState,
    tx: &mut Tx,
    wheel: &WheelConfig,
    user_id: u64,
    draw_count: u32,
    key: Option<&IdemKey>,
) -> Result<Drawn> {
    let mut account = Account::lock(tx, user_id).await?;
    let fp = fingerprint(draw_count);
    if let Some(stored) = stored_result(tx, user_id, key, &fp).await? {
        return Ok(Drawn::Replayed(stored));
    }

    let today = (Utc::now()
        + ChronoDuration::minutes(state.config.business_utc_offset_minutes as i64))
    .date_naive();
    let drawn_today = if account.user.draw_day == Some(today) {
        account.user.draw_day_count
    } else {
        0
    };
    if wheel.daily_limit > 0 && drawn_today + draw_count > wheel.daily_limit {
        return Err(Error::Refused(ErrorCode::DailyLimitReached));
    }
    account.user.draw_day = Some(today);
    account.user.draw_day_count = drawn_today + draw_count;

    let cost = wheel.cost_points * draw_count as i64;
    let mut ids = ulid::Generator::new();
    let draw_ids: Vec<String> = (0..draw_count)
        .map(|_| {
            ids.generate()
                .map(|u| u.to_string())
                .unwrap_or_else(|_| ulid::Ulid::new().to_string())
        })
        .collect();
    account.spend(
        cost,
        source::LOTTERY,
        format!("抽奖消耗（{draw_count}次）"),
        Some(draw_ids[0].clone()),
    )?;

    // A CSPRNG seeded from the OS for each command; `Send`, unlike ThreadRng.
    let mut rng = StdRng::from_os_rng();
    let mut records = Vec::with_capacity(draw_count as usize);
    let mut items = Vec::with_capacity(draw_count as usize);
    for draw_id in draw_ids {
        let pity_before = account.user.pity_count;
        let pick = wheel.pick(pity_before, &mut rng);
        let mut index = pick.index;
        let mut fallback_from = None;
        if wheel.prizes[index].limited
            && !store::lottery::take_prize_stock(tx, wheel.prizes[index].prize_id).await?
        {
            fallback_from = Some(wheel.prizes[index].prize_id);
            index = wheel.fallback_index(pick.forced);
        }
        let prize = &wheel.prizes[index];
        account.user.pity_count = wheel.next_pity(pity_before, index);
        account.earn(
            prize.points(),
            source::LOTTERY_PRIZE,
            format!("抽奖奖励：{}", prize.prize_name),
            Some(draw_id.clone()),
        );
        records.push(store::lottery::NewDraw {
            draw_id: draw_id.clone(),
            prize_id: prize.prize_id,
            prize_name: prize.prize_name.clone(),
            prize_type: prize.prize_type.as_str(),
            value_cents: prize.value_cents,
            angle: prize.angle,
            points_cost: wheel.cost_points,
            is_pity: pick.forced,
            pity_before,
            fallback_from,
        });
        items.push(DrawItem {
            draw_id,
            prize_id: prize.prize_id,
            prize_name: prize.prize_name.clone(),
            prize_type: prize.prize_type.as_str().into(),
            prize_value: Money(prize.value_cents),
            angle: prize.angle,
            is_pity: pick.forced,
        });
    }

    store::lottery::insert_draws(
        tx,
        user_id,
        wheel.version,
        key.map(IdemKey::as_str),
        &records,
    )
    .await?;
    let result = DrawResult {
        draws: items,
        points_cost: cost,
        remaining_points: account.balance(),
    };
    let data =
        serde_json::to_string(&result).map_err(|e| Error::internal(ErrorCode::DrawFailed, e))?;
    let events = account.save(tx, "抽奖消耗", source::LOTTERY).await?;
    if let Some(key) = key {
        store::idempotency::insert(tx, user_id, key.as_str(), &fp, &data).await?;
    }
    Ok(Drawn::Fresh(DataJson(data), events))
}

pub async fn records(state: &AppState, user_id: u64, page: Page) -> Result<DrawRecords> {
    let (rows, total) =
        store::lottery::page_draws(&state.db, user_id, page.size, page.offset()).await?;
    Ok(DrawRecords {
        draws: rows
            .into_iter()
            .map(|r| DrawRecord {
                draw_id: r.draw_id,
                prize_id: r.prize_id as u64,
                prize_name: r.prize_name,
                prize_type: r.prize_type,
                prize_value: Money(r.value_cents),
                angle: r.angle,
                is_pity: r.is_pity,
                points_cost: r.points_cost as i64,
                created_at: to_rfc3339(r.created_at),
            })
            .collect(),
        pagination: page.pagination(total),
    })
}

/// A merchant's change to the wheel's settings. Field by field optional;
/// the result must still be a valid wheel, or nothing changes.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    pub cost_points: Option<u32>,
    pub pity_threshold: Option<u32>,
    pub daily_limit: Option<u32>,
}

#[instrument(skip_all)]
pub async fn update_settings(
    state: &AppState,
    patch: SettingsPatch,
) -> Result<protocol::LotterySettings> {
    if patch
        .cost_points
        .is_some_and(|c| !(1..=100_000).contains(&c))
    {
        return Err(Error::Invalid("cost_points must be 1 to 100000".into()));
    }
    if patch
        .pity_threshold
        .is_some_and(|t| !(1..=1000).contains(&t))
    {
        return Err(Error::Invalid("pity_threshold must be 1 to 1000".into()));
    }
    if patch.daily_limit.is_some_and(|d| d > 10_000) {
        return Err(Error::Invalid(
            "daily_limit must be 0 (no limit) to 10000".into(),
        ));
    }
    let mut tx = state.db.begin().await?;
    let mut s = store::lottery::lock_settings(&mut tx)
        .await?
        .ok_or_else(|| Error::internal(ErrorCode::Internal, "lottery_settings has no row"))?;
    s.version += 1;
    s.cost_points = patch.cost_points.unwrap_or(s.cost_points);
    s.pity_threshold = patch.pity_threshold.unwrap_or(s.pity_threshold);
    s.daily_limit = patch.daily_limit.unwrap_or(s.daily_limit);
    store::lottery::write_settings(&mut tx, &s).await?;
    tx.commit().await?;
    reload_wheel(state).await?;
    Ok(protocol::LotterySettings {
        cost_points: s.cost_points,
        pity_threshold: s.pity_threshold,
        daily_limit: s.daily_limit,
        version: s.version,
    })
}

/// Reloads the wheel from the database into this process.
pub async fn reload_wheel(state: &AppState) -> Result<()> {
    let wheel = load_wheel(&state.db).await?;
    if let Err(why) = &wheel {
        tracing::error!(%why, "the prize wheel's configuration is invalid; draws are refused until it is fixed");
    }
    state.set_wheel(wheel);
    Ok(())
}

/// The version of the wheel this process uses (None when it is invalid).
pub fn loaded_version(state: &AppState) -> Option<u32> {
    state.wheel().as_ref().as_ref().ok().map(|w| w.version)
}
