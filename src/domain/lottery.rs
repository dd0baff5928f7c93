//! The prize wheel: its configuration, the draw command, records, and the
//! merchant's settings and prize editor.

use protocol::{
    DrawItem, DrawRecord, DrawRecords, DrawResult, ErrorCode, LotteryConfigView, LotterySettings,
    Money, PityView, PrizeAdmin, PrizeId, PrizeType, PrizeView, Prizes, Probability, Source,
    UserId,
};
use serde::Deserialize;
use sqlx::MySqlPool;
use std::sync::Arc;

use super::account::Account;
use super::{AuditEntry, Command, Ctx, Done, IdemKey, stored_rfc3339};
use crate::error::{Error, Result};
use crate::rules::calendar::business_day;
use crate::rules::paging::Page;
use crate::rules::wheel::{ANGLES, DRAW_COUNTS, Prize, UNITS, WheelConfig, bounds};
use crate::store::{self, Tx};

/// The wheel in use, or why there is none (draws answer 3003 and `/health`
/// says degraded, while everything else keeps working).
pub type LoadedWheel = Arc<std::result::Result<WheelConfig, String>>;

fn prize_of(r: &store::lottery::PrizeRow) -> Prize {
    Prize {
        prize_id: r.prize_id,
        prize_name: r.prize_name.clone(),
        prize_type: r.prize_type,
        value_cents: r.value_cents,
        angle: r.angle,
        color: r.color.clone(),
        weight: r.weight.clamp(0, u32::MAX as i64) as u32,
        is_activity: r.is_activity,
        is_valuable: r.is_valuable,
        limited: r.stock.is_some(),
    }
}

fn wheel_of(
    settings: &store::lottery::SettingsRow,
    rows: &[store::lottery::PrizeRow],
) -> std::result::Result<WheelConfig, String> {
    let wheel = WheelConfig {
        version: settings.version,
        cost_points: settings.cost_points as i64,
        pity_threshold: settings.pity_threshold,
        daily_limit: settings.daily_limit,
        prizes: rows.iter().map(prize_of).collect(),
    };
    wheel.validate().map(|()| wheel)
}

/// Reads the active wheel and validates it.
pub async fn load_wheel(db: &MySqlPool) -> sqlx::Result<std::result::Result<WheelConfig, String>> {
    let (settings, rows) = store::lottery::load(db).await?;
    Ok(match settings {
        Some(settings) => wheel_of(&settings, &rows),
        None => Err("lottery_settings has no row".into()),
    })
}

/// The wheel, or 3003 when it cannot be used.
pub fn usable(wheel: &LoadedWheel) -> Result<&WheelConfig> {
    wheel
        .as_ref()
        .as_ref()
        .map_err(|_| Error::Refused(ErrorCode::LotteryUnavailable))
}

pub async fn config_view(
    db: &MySqlPool,
    wheel: &LoadedWheel,
    user_id: UserId,
) -> Result<LotteryConfigView> {
    let wheel = usable(wheel)?;
    let current = store::users::pity_count(db, user_id).await?;
    Ok(LotteryConfigView {
        cost_points: wheel.cost_points,
        prizes: wheel
            .prizes
            .iter()
            .map(|p| PrizeView {
                prize_id: p.prize_id,
                prize_name: p.prize_name.clone(),
                prize_type: p.prize_type,
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

/// Draws `draw_count` prizes in one transaction.
///
/// Invariants the transaction protects:
/// - the user's row is locked first, so a user's draws (and every other
///   points change) run one at a time: the balance never goes below zero,
///   the ledger sums to the balance and event `seq`s have no gaps;
/// - limited prize stock is taken with a conditional update, so it never
///   goes below zero; a prize out of stock becomes the fallback prize.
pub struct Draw<'a> {
    pub user_id: UserId,
    pub draw_count: u32,
    pub wheel: &'a WheelConfig,
    pub utc_offset_minutes: i32,
    /// Stored on the draw records, to find a command's draws.
    pub key: Option<&'a IdemKey>,
}

impl Command for Draw<'_> {
    type Reply = DrawResult;
    const NAME: &'static str = "lottery.draw";
    const FAILED: ErrorCode = ErrorCode::DrawFailed;

    fn check(&self) -> Result<()> {
        if DRAW_COUNTS.contains(&self.draw_count) {
            Ok(())
        } else {
            Err(Error::Refused(ErrorCode::InvalidDrawCount))
        }
    }

    fn fingerprint(&self) -> String {
        format!("lottery.draw:{}", self.draw_count)
    }

    async fn run(&self, tx: &mut Tx, ctx: &mut Ctx) -> Result<Done<DrawResult>> {
        let wheel = self.wheel;
        let draw_count = self.draw_count;
        let mut account = Account::lock(tx, self.user_id).await?;

        let today = business_day(ctx.now, self.utc_offset_minutes);
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
                ids.generate_from_datetime_with_source(ctx.now.into(), &mut ctx.rng)
                    .map(|u| u.to_string())
                    .unwrap_or_else(|_| ulid::Ulid::new().to_string())
            })
            .collect();
        account.spend(
            cost,
            Source::Lottery,
            format!("抽奖消耗（{draw_count}次）"),
            Some(draw_ids[0].clone()),
        )?;

        let mut records = Vec::with_capacity(draw_count as usize);
        let mut items = Vec::with_capacity(draw_count as usize);
        for draw_id in draw_ids {
            let pity_before = account.user.pity_count;
            let pick = wheel.pick(pity_before, &mut ctx.rng);
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
                Source::LotteryPrize,
                format!("抽奖奖励：{}", prize.prize_name),
                Some(draw_id.clone()),
            );
            records.push(store::lottery::NewDraw {
                draw_id: draw_id.clone(),
                prize_id: prize.prize_id,
                prize_name: prize.prize_name.clone(),
                prize_type: prize.prize_type,
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
                prize_type: prize.prize_type,
                prize_value: Money(prize.value_cents),
                angle: prize.angle,
                is_pity: pick.forced,
            });
        }

        store::lottery::insert_draws(
            tx,
            self.user_id,
            wheel.version,
            self.key.map(IdemKey::as_str),
            &records,
        )
        .await?;
        let remaining_points = account.balance();
        let events = account
            .save(tx, "抽奖消耗", Source::Lottery, ctx.now)
            .await?;
        Ok(Done::new(DrawResult {
            draws: items,
            points_cost: cost,
            remaining_points,
        })
        .with(|e| e.events = events))
    }
}

pub async fn records(db: &MySqlPool, user_id: UserId, page: Page) -> Result<DrawRecords> {
    let (rows, total) = store::lottery::page_draws(db, user_id, page.size, page.offset()).await?;
    Ok(DrawRecords {
        draws: rows
            .into_iter()
            .map(|r| DrawRecord {
                draw_id: r.draw_id,
                prize_id: r.prize_id,
                prize_name: r.prize_name,
                prize_type: r.prize_type,
                prize_value: Money(r.value_cents),
                angle: r.angle,
                is_pity: r.is_pity,
                points_cost: r.points_cost as i64,
                created_at: stored_rfc3339(r.created_at),
            })
            .collect(),
        pagination: page.pagination(total),
    })
}

fn settings_view(s: &store::lottery::SettingsRow) -> LotterySettings {
    LotterySettings {
        cost_points: s.cost_points,
        pity_threshold: s.pity_threshold,
        daily_limit: s.daily_limit,
        version: s.version,
    }
}

pub async fn settings(db: &MySqlPool) -> Result<LotterySettings> {
    let (settings, _) = store::lottery::load(db).await?;
    let s = settings.ok_or(Error::Refused(ErrorCode::LotteryUnavailable))?;
    Ok(settings_view(&s))
}

/// A merchant's change to the wheel's settings. Field by field optional;
/// each must stay within `wheel::bounds`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    pub cost_points: Option<u32>,
    pub pity_threshold: Option<u32>,
    pub daily_limit: Option<u32>,
}

pub struct UpdateSettings {
    pub merchant: UserId,
    pub patch: SettingsPatch,
}

fn within(field: &str, v: Option<u32>, range: std::ops::RangeInclusive<u32>) -> Result<()> {
    match v {
        Some(v) if !range.contains(&v) => Err(Error::invalid(
            field,
            format!("须为 {} 到 {}", range.start(), range.end()),
        )),
        _ => Ok(()),
    }
}

impl Command for UpdateSettings {
    type Reply = LotterySettings;
    const NAME: &'static str = "lottery.settings";

    fn check(&self) -> Result<()> {
        within("cost_points", self.patch.cost_points, bounds::COST_POINTS)?;
        within(
            "pity_threshold",
            self.patch.pity_threshold,
            bounds::PITY_THRESHOLD,
        )?;
        within("daily_limit", self.patch.daily_limit, bounds::DAILY_LIMIT)
    }

    async fn run(&self, tx: &mut Tx, _: &mut Ctx) -> Result<Done<LotterySettings>> {
        let before = store::lottery::lock_settings(tx)
            .await?
            .ok_or_else(|| Error::internal(ErrorCode::Internal, "lottery_settings has no row"))?;
        let mut s = before.clone();
        s.version += 1;
        s.cost_points = self.patch.cost_points.unwrap_or(s.cost_points);
        s.pity_threshold = self.patch.pity_threshold.unwrap_or(s.pity_threshold);
        s.daily_limit = self.patch.daily_limit.unwrap_or(s.daily_limit);
        store::lottery::write_settings(tx, &s).await?;
        let view = settings_view(&s);
        let audit = AuditEntry {
            actor_id: self.merchant,
            action: "lottery.settings",
            target: "wheel".into(),
            before: serde_json::to_value(settings_view(&before)).ok(),
            after: serde_json::to_value(&view).ok(),
            reason: None,
            points: None,
        };
        Ok(Done::new(view).with(|e| e.audit.push(audit)))
    }
}

fn admin_view(r: &store::lottery::PrizeRow) -> PrizeAdmin {
    PrizeAdmin {
        prize_id: Some(r.prize_id),
        prize_name: r.prize_name.clone(),
        prize_type: r.prize_type,
        prize_value: Money(r.value_cents),
        angle: r.angle,
        color: r.color.clone(),
        probability: Probability(r.weight.clamp(0, u32::MAX as i64) as u32),
        is_activity: r.is_activity,
        is_valuable: r.is_valuable,
        stock: r.stock.map(i64::from),
    }
}

pub async fn prizes(db: &MySqlPool) -> Result<Prizes> {
    let (settings, rows) = store::lottery::load(db).await?;
    Ok(Prizes {
        prizes: rows.iter().map(admin_view).collect(),
        version: settings.map_or(0, |s| s.version),
    })
}

/// A merchant replaces the wheel's eight prizes. The new wheel must pass
/// everything a wheel promises (`WheelConfig::validate`: angles, odds that
/// sum to exactly 1, an unlimited empty prize, an unlimited valuable one)
/// and the editor's bounds; otherwise nothing changes and the reason is
/// the answer.
pub struct UpdatePrizes {
    pub merchant: UserId,
    pub prizes: Vec<PrizeAdmin>,
}

impl UpdatePrizes {
    fn candidate(&self) -> Result<Vec<Prize>> {
        let mut out = Vec::with_capacity(self.prizes.len());
        for (i, p) in self.prizes.iter().enumerate() {
            let at = |field: &str| format!("prizes[{i}].{field}");
            let name_len = p.prize_name.trim().chars().count();
            if !bounds::PRIZE_NAME_CHARS.contains(&name_len) {
                return Err(Error::invalid(&at("prize_name"), "长度须为 1 到 20 个字符"));
            }
            if !is_color(&p.color) {
                return Err(Error::invalid(&at("color"), "须为 #RRGGBB 形式的颜色"));
            }
            let cents = p.prize_value.cents();
            let (max, what) = match p.prize_type {
                PrizeType::Points => (bounds::PRIZE_POINTS_MAX * 100, "积分"),
                _ => (bounds::PRIZE_VALUE_CENTS_MAX, "面值"),
            };
            if !(0..=max).contains(&cents)
                || (p.prize_type == PrizeType::Points && cents % 100 != 0)
            {
                return Err(Error::invalid(
                    &at("prize_value"),
                    format!(
                        "{what}须为 0 到 {}{}",
                        max / 100,
                        if p.prize_type == PrizeType::Points {
                            " 的整数"
                        } else {
                            ""
                        }
                    ),
                ));
            }
            if let Some(stock) = p.stock
                && !(0..=bounds::PRIZE_STOCK_MAX).contains(&stock)
            {
                return Err(Error::invalid(
                    &at("stock"),
                    format!("须为 0 到 {} 或 null（不限量）", bounds::PRIZE_STOCK_MAX),
                ));
            }
            if p.probability.0 > UNITS {
                return Err(Error::invalid(&at("probability"), "须为 0 到 1"));
            }
            out.push(Prize {
                prize_id: p.prize_id.unwrap_or(PrizeId(0)),
                prize_name: p.prize_name.trim().to_string(),
                prize_type: p.prize_type,
                value_cents: cents,
                angle: p.angle,
                color: p.color.clone(),
                weight: p.probability.0,
                is_activity: p.is_activity,
                is_valuable: p.is_valuable,
                limited: p.stock.is_some(),
            });
        }
        Ok(out)
    }
}

fn is_color(c: &str) -> bool {
    c.len() == 7 && c.starts_with('#') && c[1..].bytes().all(|b| b.is_ascii_hexdigit())
}

impl Command for UpdatePrizes {
    type Reply = Prizes;
    const NAME: &'static str = "lottery.prizes";

    fn check(&self) -> Result<()> {
        if self.prizes.len() != ANGLES.len() {
            return Err(Error::invalid("prizes", "须为 8 个奖品"));
        }
        self.candidate().map(|_| ())
    }

    async fn run(&self, tx: &mut Tx, _: &mut Ctx) -> Result<Done<Prizes>> {
        let settings = store::lottery::lock_settings(tx)
            .await?
            .ok_or_else(|| Error::internal(ErrorCode::Internal, "lottery_settings has no row"))?;
        let before = store::lottery::active_prizes(tx).await?;
        let mut prizes = self.candidate()?;
        prizes.sort_by_key(|p| p.angle);
        let wheel = WheelConfig {
            version: settings.version + 1,
            cost_points: settings.cost_points as i64,
            pity_threshold: settings.pity_threshold,
            daily_limit: settings.daily_limit,
            prizes,
        };
        wheel.validate().map_err(Error::Invalid)?;

        let mut kept = Vec::with_capacity(self.prizes.len());
        for p in &self.prizes {
            let write = store::lottery::PrizeWrite {
                prize_name: p.prize_name.trim(),
                prize_type: p.prize_type,
                value_cents: p.prize_value.cents(),
                angle: p.angle,
                color: &p.color,
                weight: p.probability.0,
                is_activity: p.is_activity,
                is_valuable: p.is_valuable,
                stock: p.stock.map(|s| s as i32),
            };
            let id = match p.prize_id {
                Some(id) if store::lottery::update_prize(tx, id, &write).await? => id,
                Some(id) => {
                    return Err(Error::invalid("prizes", format!("奖品 {id} 不存在")));
                }
                None => store::lottery::insert_prize(tx, &write).await?,
            };
            kept.push(id);
        }
        store::lottery::deactivate_others(tx, &kept).await?;
        let mut next = settings.clone();
        next.version += 1;
        store::lottery::write_settings(tx, &next).await?;
        let after = store::lottery::active_prizes(tx).await?;
        let view = Prizes {
            prizes: after.iter().map(admin_view).collect(),
            version: next.version,
        };
        let audit = AuditEntry {
            actor_id: self.merchant,
            action: "lottery.prizes",
            target: "wheel".into(),
            before: serde_json::to_value(before.iter().map(admin_view).collect::<Vec<_>>()).ok(),
            after: serde_json::to_value(&view.prizes).ok(),
            reason: None,
            points: None,
        };
        Ok(Done::new(view).with(|e| e.audit.push(audit)))
    }
}
