//! The prize wheel's rules, free of I/O: the configuration and its
//! validation, the weighted pick and the pity guarantee.
//!
//! Probabilities are published with four decimal places, so each prize has
//! an integer weight in ten-thousandths and the weights sum to exactly
//! 10 000: a pick is one uniform integer in `0..10_000`, with no floating
//! point anywhere between the published odds and the outcome.

use protocol::{PrizeId, PrizeType};
use rand::Rng;

/// Weight units per 1.0 of probability.
pub const UNITS: u32 = 10_000;
pub const ANGLES: [u16; 8] = [0, 45, 90, 135, 180, 225, 270, 315];
pub const DRAW_COUNTS: [u32; 3] = [1, 5, 10];

#[derive(Clone, Debug)]
pub struct Prize {
    pub prize_id: PrizeId,
    pub prize_name: String,
    pub prize_type: PrizeType,
    /// Hundredths; for a `points` prize, points × 100.
    pub value_cents: i64,
    pub angle: u16,
    pub color: String,
    /// Probability × 10 000.
    pub weight: u32,
    pub is_activity: bool,
    /// A win for the pity rule; what a forced draw picks from.
    pub is_valuable: bool,
    /// Whether the prize has a stock limit. Stock itself lives in the
    /// database and is taken transactionally; this only says there is one.
    pub limited: bool,
}

impl Prize {
    /// Points credited when this prize is won.
    pub fn points(&self) -> i64 {
        match self.prize_type {
            PrizeType::Points => self.value_cents / 100,
            _ => 0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct WheelConfig {
    pub version: u32,
    pub cost_points: i64,
    /// After this many consecutive draws without a valuable prize, the next
    /// draw is forced to a valuable one.
    pub pity_threshold: u32,
    /// Draws per user per business day; 0 means no limit.
    pub daily_limit: u32,
    /// Sorted by angle.
    pub prizes: Vec<Prize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    /// Index into `WheelConfig::prizes`.
    pub index: usize,
    /// The pity rule chose this draw's pool.
    pub forced: bool,
}

impl WheelConfig {
    /// Everything the wheel promises: 8 active prizes at the 8 distinct
    /// 45° angles, published odds that sum to exactly 1, an unlimited
    /// `empty` prize to fall back on, and an unlimited valuable prize so the
    /// pity guarantee can always be kept.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.prizes.len() != ANGLES.len() {
            problems.push(format!("转盘须有 8 个奖品，现有 {} 个", self.prizes.len()));
        }
        let mut angles: Vec<u16> = self.prizes.iter().map(|p| p.angle).collect();
        angles.sort_unstable();
        if angles != ANGLES {
            problems.push(format!(
                "奖品须各占一个角度（0、45、…、315），现为 {angles:?}"
            ));
        }
        let total: u32 = self.prizes.iter().map(|p| p.weight).sum();
        if total != UNITS {
            problems.push(format!(
                "概率合计须为 1.0000，现为 {}.{:04}",
                total / UNITS,
                total % UNITS
            ));
        }
        if !self
            .prizes
            .iter()
            .any(|p| p.prize_type == PrizeType::Empty && !p.limited)
        {
            problems.push("须有一个不限量的 empty（谢谢参与）奖品".into());
        }
        if let Some(p) = self
            .prizes
            .iter()
            .find(|p| p.prize_type == PrizeType::Empty && p.is_valuable)
        {
            problems.push(format!("奖品 {} 为 empty，不能计入保底", p.prize_id));
        }
        if !self
            .prizes
            .iter()
            .any(|p| p.is_valuable && !p.limited && p.weight > 0)
        {
            problems.push("保底须有一个不限量且概率大于 0 的贵重奖品".into());
        }
        if let Some(p) = self.prizes.iter().find(|p| p.value_cents < 0) {
            problems.push(format!("奖品 {} 的价值不能为负", p.prize_id));
        }
        if self.cost_points <= 0 {
            problems.push("每次抽奖消耗的积分须为正数".into());
        }
        if self.pity_threshold == 0 {
            problems.push("保底次数至少为 1".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("；"))
        }
    }

    /// Picks one prize. With `pity_count >= pity_threshold` the pick is
    /// forced: drawn among the valuable prizes, in proportion to their
    /// published odds. `rng` must be a cryptographically secure generator in
    /// production; tests pass a seeded one.
    pub fn pick(&self, pity_count: u32, rng: &mut impl Rng) -> Pick {
        let forced = pity_count >= self.pity_threshold;
        let eligible = |p: &Prize| !forced || p.is_valuable;
        let total: u32 = self
            .prizes
            .iter()
            .filter(|p| eligible(p))
            .map(|p| p.weight)
            .sum();
        let mut ticket = rng.random_range(0..total.max(1));
        for (index, p) in self.prizes.iter().enumerate() {
            if !eligible(p) {
                continue;
            }
            if ticket < p.weight {
                return Pick { index, forced };
            }
            ticket -= p.weight;
        }
        // Unreachable for a validated config; stay total anyway.
        Pick {
            index: self.fallback_index(forced),
            forced,
        }
    }

    /// What a pick becomes when its prize's stock has run out: the most
    /// likely unlimited valuable prize for a forced draw (the guarantee
    /// holds), the most likely unlimited `empty` prize otherwise.
    pub fn fallback_index(&self, forced: bool) -> usize {
        let candidates = self.prizes.iter().enumerate().filter(|(_, p)| {
            !p.limited
                && if forced {
                    p.is_valuable
                } else {
                    p.prize_type == PrizeType::Empty
                }
        });
        candidates
            .max_by_key(|(i, p)| (p.weight, std::cmp::Reverse(*i)))
            .map(|(i, _)| i)
            .unwrap_or(0)
    }

    /// The pity counter after a draw that awarded `prizes[index]`.
    pub fn next_pity(&self, pity_count: u32, index: usize) -> u32 {
        if self.prizes[index].is_valuable {
            0
        } else {
            pity_count.saturating_add(1)
        }
    }
}

/// Limits a merchant's wheel settings must stay within: a draw costs real
/// points, so a cost of 1 (or a guarantee that never comes) is refused.
pub mod bounds {
    use std::ops::RangeInclusive;

    pub const COST_POINTS: RangeInclusive<u32> = 10..=10_000;
    pub const PITY_THRESHOLD: RangeInclusive<u32> = 1..=100;
    /// 0 means no daily limit.
    pub const DAILY_LIMIT: RangeInclusive<u32> = 0..=1_000;
    /// A `points` prize credits at most this many points.
    pub const PRIZE_POINTS_MAX: i64 = 100_000;
    /// Face value of any other prize, in hundredths.
    pub const PRIZE_VALUE_CENTS_MAX: i64 = 1_000_000;
    pub const PRIZE_STOCK_MAX: i64 = 1_000_000;
    pub const PRIZE_NAME_CHARS: RangeInclusive<usize> = 1..=20;
}

/// A prize of the demo wheel, as it is seeded into a development database.
#[derive(Clone, Copy, Debug)]
pub struct DemoPrize {
    pub name: &'static str,
    pub prize_type: PrizeType,
    /// Hundredths; for a `points` prize, points × 100.
    pub value_cents: i64,
    pub angle: u16,
    pub color: &'static str,
    /// Probability × 10 000.
    pub weight: u32,
    pub is_activity: bool,
    pub is_valuable: bool,
    /// `None`: no stock limit.
    pub stock: Option<i32>,
}

#[allow(clippy::too_many_arguments)] // one row of a table, named by the struct it builds
const fn demo_prize(
    name: &'static str,
    prize_type: PrizeType,
    value_cents: i64,
    angle: u16,
    color: &'static str,
    weight: u32,
    is_activity: bool,
    is_valuable: bool,
    stock: Option<i32>,
) -> DemoPrize {
    DemoPrize {
        name,
        prize_type,
        value_cents,
        angle,
        color,
        weight,
        is_activity,
        is_valuable,
        stock,
    }
}

/// The demo wheel, in one place: the development seed, the unit tests and
/// the benches all use it. 30 % valuable; three valuable prizes are limited.
pub const DEMO_PRIZES: [DemoPrize; 8] = {
    use PrizeType::*;
    [
        demo_prize("谢谢参与", Empty, 0, 0, "#B0BEC5", 3000, false, false, None),
        demo_prize(
            "10积分", Points, 1000, 45, "#FFD54F", 2500, false, false, None,
        ),
        demo_prize(
            "50积分", Points, 5000, 90, "#FFB74D", 1500, false, false, None,
        ),
        demo_prize(
            "免费饮品券",
            Coupon,
            1500,
            135,
            "#4FC3F7",
            1000,
            false,
            true,
            None,
        ),
        demo_prize(
            "100积分",
            Points,
            10_000,
            180,
            "#81C784",
            800,
            false,
            true,
            None,
        ),
        demo_prize(
            "8折优惠券",
            Coupon,
            2000,
            225,
            "#BA68C8",
            800,
            false,
            true,
            Some(500),
        ),
        demo_prize(
            "招牌甜品",
            Physical,
            3800,
            270,
            "#F06292",
            350,
            true,
            true,
            Some(100),
        ),
        demo_prize(
            "500积分",
            Points,
            50_000,
            315,
            "#E57373",
            50,
            true,
            true,
            Some(20),
        ),
    ]
};
pub const DEMO_COST_POINTS: u32 = 100;
pub const DEMO_PITY_THRESHOLD: u32 = 10;
pub const DEMO_DAILY_LIMIT: u32 = 50;

/// The demo wheel as the server holds it (prize ids 1–8 in order).
pub fn demo() -> WheelConfig {
    WheelConfig {
        version: 1,
        cost_points: DEMO_COST_POINTS as i64,
        pity_threshold: DEMO_PITY_THRESHOLD,
        daily_limit: DEMO_DAILY_LIMIT,
        prizes: DEMO_PRIZES
            .iter()
            .enumerate()
            .map(|(i, p)| Prize {
                prize_id: PrizeId(i as u32 + 1),
                prize_name: p.name.to_string(),
                prize_type: p.prize_type,
                value_cents: p.value_cents,
                angle: p.angle,
                color: p.color.to_string(),
                weight: p.weight,
                is_activity: p.is_activity,
                is_valuable: p.is_valuable,
                limited: p.stock.is_some(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn the_demo_wheel_is_valid() {
        demo().validate().unwrap();
    }

    #[test]
    fn odds_that_do_not_sum_to_one_are_refused() {
        let mut c = demo();
        c.prizes[0].weight -= 1;
        assert!(c.validate().unwrap_err().contains("概率合计须为 1.0000"));
    }

    #[test]
    fn duplicate_angles_and_missing_prizes_are_refused() {
        let mut c = demo();
        c.prizes[1].angle = 0;
        assert!(c.validate().unwrap_err().contains("角度"));
        let mut c = demo();
        c.prizes.pop();
        assert!(c.validate().unwrap_err().contains("8 个奖品"));
    }

    #[test]
    fn a_wheel_without_an_unlimited_empty_prize_is_refused() {
        let mut c = demo();
        c.prizes[0].limited = true;
        assert!(c.validate().unwrap_err().contains("不限量的 empty"));
    }

    #[test]
    fn a_wheel_whose_pity_cannot_be_honoured_is_refused() {
        let mut c = demo();
        c.prizes[3].limited = true;
        c.prizes[4].limited = true;
        assert!(c.validate().unwrap_err().contains("保底"));
    }

    /// Pearson's chi-square over 200 000 picks against the published odds.
    /// With 7 degrees of freedom the 0.999 quantile is 24.32: a correct
    /// picker fails this one run in a thousand; a seeded RNG makes it
    /// repeatable, and a biased picker (off by even 0.5 % on one prize)
    /// lands far above it.
    #[test]
    fn picks_follow_the_published_odds() {
        let c = demo();
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let n = 200_000u32;
        let mut counts = [0u32; 8];
        for _ in 0..n {
            let p = c.pick(0, &mut rng);
            assert!(!p.forced);
            counts[p.index] += 1;
        }
        let chi2: f64 = c
            .prizes
            .iter()
            .zip(counts)
            .map(|(p, observed)| {
                let expected = n as f64 * p.weight as f64 / UNITS as f64;
                (observed as f64 - expected).powi(2) / expected
            })
            .sum();
        assert!(chi2 < 24.32, "chi-square {chi2:.2} for counts {counts:?}");
    }

    #[test]
    fn the_chi_square_check_catches_a_biased_picker() {
        // Same check, but the "observed" counts come from a wheel whose empty
        // prize is 0.5 % more likely than published.
        let published = demo();
        let mut biased = demo();
        biased.prizes[0].weight += 50;
        biased.prizes[1].weight -= 50;
        let mut rng = StdRng::seed_from_u64(7);
        let n = 200_000u32;
        let mut counts = [0u32; 8];
        for _ in 0..n {
            counts[biased.pick(0, &mut rng).index] += 1;
        }
        let chi2: f64 = published
            .prizes
            .iter()
            .zip(counts)
            .map(|(p, o)| {
                let e = n as f64 * p.weight as f64 / UNITS as f64;
                (o as f64 - e).powi(2) / e
            })
            .sum();
        assert!(
            chi2 > 24.32,
            "a biased wheel passed with chi-square {chi2:.2}"
        );
    }

    #[test]
    fn a_draw_at_the_threshold_is_forced_to_a_valuable_prize() {
        let c = demo();
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..10_000 {
            let p = c.pick(c.pity_threshold, &mut rng);
            assert!(p.forced);
            assert!(c.prizes[p.index].is_valuable);
        }
        assert!(!c.pick(c.pity_threshold - 1, &mut rng).forced);
    }

    #[test]
    fn forced_draws_keep_the_valuable_prizes_relative_odds() {
        let c = demo();
        let mut rng = StdRng::seed_from_u64(2);
        let n = 100_000;
        let mut counts = [0u32; 8];
        for _ in 0..n {
            counts[c.pick(c.pity_threshold, &mut rng).index] += 1;
        }
        let valuable_total: u32 = c
            .prizes
            .iter()
            .filter(|p| p.is_valuable)
            .map(|p| p.weight)
            .sum();
        for (i, p) in c.prizes.iter().enumerate().filter(|(_, p)| p.is_valuable) {
            let expected = n as f64 * p.weight as f64 / valuable_total as f64;
            let tolerance = 5.0 * expected.sqrt() + 1.0;
            assert!(
                (counts[i] as f64 - expected).abs() < tolerance,
                "prize {i}: {} vs {expected:.0}",
                counts[i]
            );
        }
    }

    #[test]
    fn the_counter_resets_on_a_valuable_prize_and_counts_misses() {
        let c = demo();
        assert_eq!(c.next_pity(3, 0), 4, "empty is a miss");
        assert_eq!(c.next_pity(3, 1), 4, "small points are a miss");
        assert_eq!(c.next_pity(9, 3), 0, "a valuable prize resets");
    }

    #[test]
    fn no_more_than_threshold_misses_in_a_row_whatever_the_luck() {
        let c = demo();
        let mut rng = StdRng::seed_from_u64(3);
        let (mut pity, mut streak, mut worst) = (0u32, 0u32, 0u32);
        for _ in 0..100_000 {
            let p = c.pick(pity, &mut rng);
            pity = c.next_pity(pity, p.index);
            streak = if c.prizes[p.index].is_valuable {
                0
            } else {
                streak + 1
            };
            worst = worst.max(streak);
        }
        assert_eq!(
            worst, c.pity_threshold,
            "misses in a row are capped at the threshold"
        );
    }

    #[test]
    fn stock_fallbacks_keep_the_guarantee() {
        let c = demo();
        assert_eq!(
            c.prizes[c.fallback_index(false)].prize_type,
            PrizeType::Empty
        );
        let f = &c.prizes[c.fallback_index(true)];
        assert!(f.is_valuable && !f.limited);
    }

    /// Any valid wheel: 8 prizes at the 8 angles, weights summing to 10 000
    /// (drawn as 7 cut points), at least one unlimited empty prize and one
    /// unlimited valuable prize with odds above 0, any other flags.
    fn any_wheel() -> impl Strategy<Value = WheelConfig> {
        (
            proptest::collection::vec(0..=UNITS, 7),
            proptest::collection::vec((any::<bool>(), any::<bool>(), 0u8..4), 8),
            0usize..8,
            1u32..=30,
        )
            .prop_filter_map(
                "needs the two guaranteed prizes",
                |(mut cuts, flags, empty_at, pity)| {
                    cuts.sort_unstable();
                    let mut bounds = vec![0];
                    bounds.extend(cuts);
                    bounds.push(UNITS);
                    let weights: Vec<u32> = bounds.windows(2).map(|w| w[1] - w[0]).collect();
                    let prizes: Vec<Prize> = (0..8)
                        .map(|i| {
                            let (valuable, limited, kind) = flags[i];
                            let prize_type = if i == empty_at {
                                PrizeType::Empty
                            } else {
                                [
                                    PrizeType::Points,
                                    PrizeType::Coupon,
                                    PrizeType::Physical,
                                    PrizeType::Empty,
                                ][kind as usize]
                            };
                            Prize {
                                prize_id: PrizeId(i as u32 + 1),
                                prize_name: format!("p{i}"),
                                prize_type,
                                value_cents: 100,
                                angle: ANGLES[i],
                                color: "#FFFFFF".into(),
                                weight: weights[i],
                                is_activity: false,
                                is_valuable: valuable && prize_type != PrizeType::Empty,
                                limited: limited && i != empty_at,
                            }
                        })
                        .collect();
                    let wheel = WheelConfig {
                        version: 1,
                        cost_points: 100,
                        pity_threshold: pity,
                        daily_limit: 0,
                        prizes,
                    };
                    wheel.validate().is_ok().then_some(wheel)
                },
            )
    }

    proptest! {
        /// The pity guarantee, for every wheel and every run of luck,
        /// including limited prizes that run out at any moment: never more
        /// than `threshold` draws in a row without a valuable prize.
        #[test]
        fn no_run_of_misses_is_longer_than_the_threshold(
            wheel in any_wheel(),
            seed in any::<u64>(),
            stock_out in proptest::collection::vec(any::<bool>(), 200),
        ) {
            let mut rng = StdRng::seed_from_u64(seed);
            let (mut pity, mut streak) = (0u32, 0u32);
            for out in stock_out {
                let pick = wheel.pick(pity, &mut rng);
                let index = if wheel.prizes[pick.index].limited && out {
                    wheel.fallback_index(pick.forced)
                } else {
                    pick.index
                };
                if pick.forced {
                    prop_assert!(wheel.prizes[index].is_valuable, "a forced draw gave a miss");
                }
                pity = wheel.next_pity(pity, index);
                streak = if wheel.prizes[index].is_valuable { 0 } else { streak + 1 };
                prop_assert!(streak <= wheel.pity_threshold, "{streak} misses in a row");
                prop_assert_eq!(pity, streak);
            }
        }

        /// Published odds sum to exactly 1: the four-decimal figures a guest
        /// sees add up to 1.0000 for every valid wheel, and any other total
        /// is refused.
        #[test]
        fn published_odds_of_a_valid_wheel_sum_to_exactly_one(wheel in any_wheel()) {
            let published: u32 = wheel
                .prizes
                .iter()
                .map(|p| {
                    let text = serde_json::to_string(&protocol::Probability(p.weight)).unwrap();
                    let (whole, frac) = text.split_once('.').unwrap();
                    prop_assert_eq!(frac.len(), 4);
                    Ok(whole.parse::<u32>().unwrap() * UNITS + frac.parse::<u32>().unwrap())
                })
                .collect::<Result<Vec<u32>, TestCaseError>>()?
                .iter()
                .sum();
            prop_assert_eq!(published, UNITS);
        }

        #[test]
        fn a_wheel_whose_odds_do_not_sum_to_one_is_refused(
            wheel in any_wheel(),
            at in 0usize..8,
            delta in 1u32..=500,
            up in any::<bool>(),
        ) {
            let mut w = wheel;
            let p = &mut w.prizes[at];
            if up || p.weight < delta {
                p.weight += delta;
            } else {
                p.weight -= delta;
            }
            prop_assert!(w.validate().unwrap_err().contains("概率合计须为 1.0000"));
        }
    }
}
