//! The `data` payloads of replies, REST responses and events.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ids::{
    EntryKind, OrderStatus, PrizeId, PrizeType, ProductId, ProductStatus, ReviewAction,
    ReviewStatus, Source, StockOperation, UploadId, UserId, UserStatus,
};

/// Money and prize values: an exact amount in hundredths, written on the
/// wire as a JSON number with two places (`12.50`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(pub i64);

impl Money {
    pub fn cents(self) -> i64 {
        self.0
    }
}

impl std::fmt::Display for Money {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:02}", abs / 100, abs % 100)
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // A raw number keeps the two places that an f64 would lose.
        let raw = serde_json::value::RawValue::from_string(self.to_string())
            .map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        Ok(Money((v * 100.0).round() as i64))
    }
}

/// A published probability: ten-thousandths, written as a JSON number with
/// four places (`0.0350`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Probability(pub u32);

impl Serialize for Probability {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = format!("{}.{:04}", self.0 / 10_000, self.0 % 10_000);
        let raw =
            serde_json::value::RawValue::from_string(text).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Probability {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        Ok(Probability((v * 10_000.0).round() as u32))
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UserInfo {
    pub user_id: UserId,
    /// Masked: `138****8001`.
    pub mobile: String,
    pub nickname: String,
    pub total_points: i64,
    pub is_merchant: bool,
    pub avatar: Option<String>,
    pub status: UserStatus,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoginResponse {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: u64,
    pub user_info: UserInfo,
    pub is_new_user: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VerifyResponse {
    pub valid: bool,
    pub user_info: UserInfo,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pagination {
    pub total: u64,
    pub page: u32,
    pub limit: u32,
    pub total_pages: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PointsRecord {
    pub record_id: u64,
    /// `earn` or `spend`; `points` is always positive.
    #[serde(rename = "type")]
    pub kind: EntryKind,
    pub points: i64,
    pub balance_after: i64,
    pub source: Source,
    pub description: String,
    pub related_id: Option<String>,
    pub created_at: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PointsRecords {
    pub records: Vec<PointsRecord>,
    pub pagination: Pagination,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PrizeView {
    pub prize_id: PrizeId,
    pub prize_name: String,
    pub prize_type: PrizeType,
    pub prize_value: Money,
    pub angle: u16,
    pub color: String,
    /// The published odds, four decimal places.
    pub probability: Probability,
    pub is_activity: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PityView {
    pub threshold: u32,
    pub current: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LotteryConfigView {
    pub cost_points: i64,
    pub prizes: Vec<PrizeView>,
    pub draw_counts: Vec<u32>,
    /// Draws a user may make per day; 0 means no limit.
    pub daily_limit: u32,
    pub pity: PityView,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DrawRequest {
    pub draw_count: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DrawItem {
    pub draw_id: String,
    pub prize_id: PrizeId,
    pub prize_name: String,
    pub prize_type: PrizeType,
    pub prize_value: Money,
    pub angle: u16,
    pub is_pity: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DrawResult {
    pub draws: Vec<DrawItem>,
    pub points_cost: i64,
    pub remaining_points: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DrawRecord {
    pub draw_id: String,
    pub prize_id: PrizeId,
    pub prize_name: String,
    pub prize_type: PrizeType,
    pub prize_value: Money,
    pub angle: u16,
    pub is_pity: bool,
    pub points_cost: i64,
    pub created_at: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DrawRecords {
    pub draws: Vec<DrawRecord>,
    pub pagination: Pagination,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Product {
    pub product_id: ProductId,
    pub name: String,
    pub description: String,
    pub category: String,
    pub exchange_points: i64,
    pub stock: i64,
    pub image: Option<String>,
    /// `active` or `inactive`; guests are only shown active products.
    pub status: ProductStatus,
    pub sales_count: i64,
    pub sort_order: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Products {
    pub products: Vec<Product>,
    pub pagination: Pagination,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExchangeRequest {
    pub product_id: u64,
    pub quantity: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ExchangeResult {
    pub exchange_id: String,
    pub exchange_code: String,
    pub product_id: ProductId,
    pub quantity: u32,
    pub total_cost: i64,
    pub remaining_points: i64,
    pub remaining_stock: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Order {
    pub exchange_id: String,
    pub exchange_code: String,
    pub product_id: ProductId,
    pub product_name: String,
    pub quantity: u32,
    pub total_cost: i64,
    /// `pending` until redeemed at the counter, then `redeemed`.
    pub status: OrderStatus,
    pub created_at: String,
    pub redeemed_at: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Orders {
    pub orders: Vec<Order>,
    pub pagination: Pagination,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StockUpdate {
    pub product_id: ProductId,
    pub stock: i64,
    pub product_name: String,
    /// `purchase`, `restock` or `admin_adjust`.
    pub operation: StockOperation,
    pub timestamp: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Redemption {
    pub exchange_id: String,
    pub exchange_code: String,
    pub user_id: UserId,
    pub product_id: ProductId,
    pub product_name: String,
    pub quantity: u32,
    pub status: OrderStatus,
    pub redeemed_at: String,
}

/// What a counter code is for, before (or after) it is redeemed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OrderLookup {
    pub exchange_id: String,
    pub exchange_code: String,
    pub user_id: UserId,
    /// Masked, as in `user_info`.
    pub user_mobile: String,
    pub product_id: ProductId,
    pub product_name: String,
    pub quantity: u32,
    pub total_cost: i64,
    pub status: OrderStatus,
    pub created_at: String,
    pub redeemed_at: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StockChange {
    pub change_id: u64,
    pub product_id: ProductId,
    pub operation: StockOperation,
    pub delta: i64,
    pub stock_after: i64,
    pub actor_id: Option<UserId>,
    pub reason: String,
    pub related_id: Option<String>,
    pub created_at: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StockChanges {
    pub changes: Vec<StockChange>,
    pub pagination: Pagination,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UploadResult {
    pub upload_id: UploadId,
    pub image_url: String,
    pub estimated_points: i64,
    pub review_status: ReviewStatus,
    pub message: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Upload {
    pub upload_id: UploadId,
    pub image_url: String,
    pub amount: Money,
    pub estimated_points: i64,
    /// `pending`, `approved` or `rejected`.
    pub review_status: ReviewStatus,
    pub points_awarded: Option<i64>,
    pub review_reason: Option<String>,
    pub created_at: String,
    pub reviewed_at: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Uploads {
    pub uploads: Vec<Upload>,
    pub pagination: Pagination,
}

/// An upload in the merchant's review queue: the upload and whose it is.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReviewItem {
    pub user_id: UserId,
    /// Masked, as in `user_info`.
    pub user_mobile: String,
    /// The most an approval of this receipt may award.
    pub max_points: i64,
    #[serde(flatten)]
    pub upload: Upload,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reviews {
    pub reviews: Vec<ReviewItem>,
    pub pagination: Pagination,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReviewRequest {
    pub upload_id: String,
    /// `approve` or `reject`.
    pub action: String,
    /// Points to award on approval; defaults to the estimate.
    pub points: Option<i64>,
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReviewOutcome {
    pub upload_id: UploadId,
    pub action: ReviewAction,
    pub points_awarded: i64,
    pub user_new_balance: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReviewResult {
    pub upload_id: UploadId,
    /// `approved` or `rejected`.
    pub status: ReviewStatus,
    pub points_awarded: i64,
    pub reason: String,
    pub timestamp: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Counts {
    pub uploads: u64,
    pub pending: u64,
    pub approved: u64,
    pub rejected: u64,
    pub points_awarded: u64,
    pub draws: u64,
    pub exchanges: u64,
    pub new_users: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Statistics {
    /// Since the start of the business day (UTC+8).
    pub today: Counts,
    pub overall: Counts,
    pub live_connections: u64,
    pub live_users: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PointsAdjustment {
    pub user_id: UserId,
    /// The change: positive grants, negative deducts.
    pub points: i64,
    pub total_points: i64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LotterySettings {
    pub cost_points: u32,
    pub pity_threshold: u32,
    /// Draws per user per business day; 0 means no limit.
    pub daily_limit: u32,
    /// Changes with every edit of the wheel; stored on each draw record.
    pub version: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Welcome {
    pub user_id: UserId,
    pub total_points: i64,
    pub last_seq: u64,
    pub heartbeat_interval_ms: u64,
    pub server_time: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PointsUpdate {
    pub user_id: UserId,
    pub total_points: i64,
    pub change_points: i64,
    pub reason: String,
    pub source: Source,
    pub timestamp: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SyncRequest {
    pub since: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SyncResult {
    pub from_seq: u64,
    pub to_seq: u64,
    pub count: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SyncReset {
    pub reset: bool,
    pub last_seq: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuthRefreshRequest {
    pub access_token: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuthRefreshResult {
    pub user_id: UserId,
    pub expires_at: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PingResult {
    pub server_time: String,
}

/// A prize as the merchant's wheel editor reads and writes it: the guest's
/// view plus what guests do not see (pity flag, stock).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PrizeAdmin {
    /// Absent when writing a new prize.
    #[serde(default)]
    pub prize_id: Option<PrizeId>,
    pub prize_name: String,
    pub prize_type: PrizeType,
    /// Points for a `points` prize; face value (two places) otherwise.
    pub prize_value: Money,
    pub angle: u16,
    pub color: String,
    pub probability: Probability,
    #[serde(default)]
    pub is_activity: bool,
    /// Counts as a win for the pity guarantee.
    #[serde(default)]
    pub is_valuable: bool,
    /// Remaining stock; `null` for no limit.
    #[serde(default)]
    pub stock: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Prizes {
    pub prizes: Vec<PrizeAdmin>,
    /// The wheel's version after this change (absent when writing).
    #[serde(default)]
    pub version: u32,
}

/// One merchant action, as the audit log lists it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: u64,
    pub actor_id: UserId,
    /// `review.approve`, `review.reject`, `points.adjust`, `product.create`,
    /// `product.update`, `stock.change`, `order.redeem`, `lottery.settings`,
    /// `lottery.prizes`.
    pub action: String,
    /// What it acted on: `upload:…`, `user:…`, `product:…`, `order:…`, `wheel`.
    pub target: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    pub reason: Option<String>,
    pub created_at: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditLog {
    pub entries: Vec<AuditEntry>,
    pub pagination: Pagination,
}

/// Activity in one hour (UTC, RFC 3339 at the hour).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HourStat {
    pub hour: String,
    pub draws: u64,
    pub exchanges: u64,
    pub points_awarded: u64,
    pub uploads: u64,
}

/// Live sockets of this instance at a moment.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ConnectionSample {
    pub at: String,
    pub count: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HourlyStatistics {
    /// Every hour of the window, oldest first (zeros included).
    pub hours: Vec<HourStat>,
    /// Samples of live connections over the same window, oldest first.
    pub connections: Vec<ConnectionSample>,
}

/// To every merchant socket: an upload entered or left the review queue.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReviewQueueUpdate {
    pub upload_id: UploadId,
    pub status: ReviewStatus,
    pub user_id: UserId,
    /// Masked, as in `user_info`.
    pub user_mobile: String,
    /// A signed URL of the receipt, as in the review list.
    pub image_url: String,
    /// The most an approval of this receipt may award.
    pub max_points: i64,
    pub amount: Money,
    pub estimated_points: i64,
    pub points_awarded: Option<i64>,
    pub created_at: String,
}

/// To every socket: a product was created, edited, activated or
/// deactivated (stock changes come as `stock_update`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProductUpdate {
    pub product_id: ProductId,
    pub name: String,
    pub exchange_points: i64,
    pub status: ProductStatus,
    pub stock: i64,
    pub timestamp: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_is_a_number_with_two_places() {
        assert_eq!(serde_json::to_string(&Money(1250)).unwrap(), "12.50");
        assert_eq!(serde_json::to_string(&Money(5)).unwrap(), "0.05");
        assert_eq!(serde_json::to_string(&Money(-5)).unwrap(), "-0.05");
        let m: Money = serde_json::from_str("12.5").unwrap();
        assert_eq!(m, Money(1250));
    }

    #[test]
    fn probabilities_have_four_places() {
        assert_eq!(serde_json::to_string(&Probability(350)).unwrap(), "0.0350");
        assert_eq!(
            serde_json::to_string(&Probability(10_000)).unwrap(),
            "1.0000"
        );
    }
}
