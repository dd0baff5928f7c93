//! Result codes carried in `code` by REST envelopes, socket replies and
//! error events, and the close codes the server uses on `/ws`.
//!
//! Codes are stable: clients branch on them. `protocol/README.md` lists
//! every one with its meaning; keep the two in step.

/// Every non-zero `code` the server sends, with its HTTP status and the
/// user-facing message (Chinese, shown by the mini-program as it is).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    // 1xxx: login and tokens of the auth endpoints.
    LoginFailed,
    InvalidPhone,
    WrongCode,
    CodeRateLimited,
    RefreshTokenInvalid,
    RefreshTokenReused,
    AccountDisabled,
    TooManyCodeAttempts,
    SmsFailed,
    // 2xxx: any request.
    InvalidParameter,
    NotFound,
    RateLimited,
    MerchantRequired,
    PayloadTooLarge,
    IdempotencyConflict,
    ServiceUnavailable,
    Internal,
    MethodNotAllowed,
    TooManyConnections,
    Busy,
    MerchantLimitReached,
    RequestTimeout,
    // 3xxx: the prize wheel.
    DrawFailed,
    DailyLimitReached,
    InvalidDrawCount,
    LotteryUnavailable,
    // 4xxx: access tokens and exchange.
    ExchangeFailed,
    TokenMissing,
    TokenInvalid,
    TokenExpired,
    NotEnoughStock,
    NotEnoughPoints,
    ProductUnavailable,
    ExchangeCodeNotFound,
    AlreadyRedeemed,
    // 5xxx / 6xxx: uploads and reviews.
    UploadFailed,
    NoImage,
    InvalidAmount,
    UnsupportedImage,
    UploadQuotaReached,
    TooManyPending,
    ReviewFailed,
    OwnUpload,
    AlreadyReviewed,
    // 7xxx: the socket.
    UnknownCommand,
    MalformedFrame,
    MissingId,
    InvalidId,
    SyncTooOld,
}

impl ErrorCode {
    pub const ALL: &'static [ErrorCode] = &[
        Self::LoginFailed,
        Self::InvalidPhone,
        Self::WrongCode,
        Self::CodeRateLimited,
        Self::RefreshTokenInvalid,
        Self::RefreshTokenReused,
        Self::AccountDisabled,
        Self::TooManyCodeAttempts,
        Self::SmsFailed,
        Self::InvalidParameter,
        Self::NotFound,
        Self::RateLimited,
        Self::MerchantRequired,
        Self::PayloadTooLarge,
        Self::IdempotencyConflict,
        Self::ServiceUnavailable,
        Self::Internal,
        Self::MethodNotAllowed,
        Self::TooManyConnections,
        Self::Busy,
        Self::MerchantLimitReached,
        Self::RequestTimeout,
        Self::DrawFailed,
        Self::DailyLimitReached,
        Self::InvalidDrawCount,
        Self::LotteryUnavailable,
        Self::ExchangeFailed,
        Self::TokenMissing,
        Self::TokenInvalid,
        Self::TokenExpired,
        Self::NotEnoughStock,
        Self::NotEnoughPoints,
        Self::ProductUnavailable,
        Self::ExchangeCodeNotFound,
        Self::AlreadyRedeemed,
        Self::UploadFailed,
        Self::NoImage,
        Self::InvalidAmount,
        Self::UnsupportedImage,
        Self::UploadQuotaReached,
        Self::TooManyPending,
        Self::ReviewFailed,
        Self::OwnUpload,
        Self::AlreadyReviewed,
        Self::UnknownCommand,
        Self::MalformedFrame,
        Self::MissingId,
        Self::InvalidId,
        Self::SyncTooOld,
    ];

    /// `(code, http status, message)` in one place so they cannot drift.
    const fn spec(self) -> (i32, u16, &'static str) {
        match self {
            Self::LoginFailed => (1000, 500, "登录失败，请稍后重试"),
            Self::InvalidPhone => (1001, 400, "手机号格式不正确"),
            Self::WrongCode => (1002, 400, "验证码错误或已过期"),
            Self::CodeRateLimited => (1003, 429, "验证码发送过于频繁，请稍后再试"),
            Self::RefreshTokenInvalid => (1004, 401, "登录已失效，请重新登录"),
            Self::RefreshTokenReused => (1005, 401, "登录状态异常，请重新登录"),
            Self::AccountDisabled => (1006, 403, "账号已被停用"),
            Self::TooManyCodeAttempts => (1007, 429, "验证码错误次数过多，请重新获取"),
            Self::SmsFailed => (1008, 503, "短信发送失败，请稍后重试"),
            Self::InvalidParameter => (2000, 400, "参数错误"),
            Self::NotFound => (2001, 404, "请求的资源不存在"),
            Self::RateLimited => (2002, 429, "请求过于频繁，请稍后再试"),
            Self::MerchantRequired => (2003, 403, "需要商家权限"),
            Self::PayloadTooLarge => (2004, 413, "请求内容过大"),
            Self::IdempotencyConflict => (2005, 409, "请求标识已用于其他操作"),
            Self::ServiceUnavailable => (2006, 503, "服务暂不可用，请稍后重试"),
            Self::Internal => (2007, 500, "服务器繁忙，请稍后重试"),
            Self::MethodNotAllowed => (2008, 405, "请求方法不支持"),
            Self::TooManyConnections => (2009, 503, "连接数已满，请稍后重试"),
            Self::Busy => (2010, 503, "系统繁忙，请稍后重试"),
            Self::MerchantLimitReached => (2011, 422, "已超出商家操作限额"),
            Self::RequestTimeout => (2012, 408, "请求超时"),
            Self::DrawFailed => (3000, 500, "抽奖失败，请稍后重试"),
            Self::DailyLimitReached => (3001, 422, "今日抽奖次数已用完"),
            Self::InvalidDrawCount => (3002, 400, "不支持的抽奖次数"),
            Self::LotteryUnavailable => (3003, 503, "抽奖暂未开放"),
            Self::ExchangeFailed => (4000, 500, "兑换失败，请稍后重试"),
            Self::TokenMissing => (4001, 401, "缺少访问令牌"),
            Self::TokenInvalid => (4002, 401, "访问令牌无效"),
            Self::TokenExpired => (4003, 401, "访问令牌已过期"),
            Self::NotEnoughStock => (4004, 422, "库存不足"),
            Self::NotEnoughPoints => (4005, 422, "积分余额不足"),
            Self::ProductUnavailable => (4006, 404, "商品不存在或已下架"),
            Self::ExchangeCodeNotFound => (4007, 404, "兑换码不存在"),
            Self::AlreadyRedeemed => (4008, 409, "该兑换码已核销"),
            Self::UploadFailed => (5000, 500, "上传失败，请稍后重试"),
            Self::NoImage => (5001, 400, "请选择要上传的图片"),
            Self::InvalidAmount => (5002, 400, "消费金额必须在0.01-9999.99元之间"),
            Self::UnsupportedImage => (5003, 400, "仅支持JPEG、PNG、WebP格式的图片"),
            Self::UploadQuotaReached => (5004, 429, "今日上传已达上限，请明天再试"),
            Self::TooManyPending => (5005, 429, "待审核的小票过多，请等待审核后再上传"),
            Self::ReviewFailed => (6000, 500, "审核操作失败"),
            Self::OwnUpload => (6001, 403, "不能审核自己上传的小票"),
            Self::AlreadyReviewed => (6004, 409, "该记录已被审核"),
            Self::UnknownCommand => (7001, 400, "未知的指令类型"),
            Self::MalformedFrame => (7002, 400, "消息格式错误"),
            Self::MissingId => (7003, 400, "缺少指令ID"),
            Self::InvalidId => (7004, 400, "指令ID格式错误"),
            Self::SyncTooOld => (7005, 409, "事件已过期，请重新加载"),
        }
    }

    pub const fn code(self) -> i32 {
        self.spec().0
    }

    pub const fn http_status(self) -> u16 {
        self.spec().1
    }

    pub const fn msg(self) -> &'static str {
        self.spec().2
    }

    pub fn from_code(code: i32) -> Option<ErrorCode> {
        Self::ALL.iter().copied().find(|c| c.code() == code)
    }
}

/// Success.
pub const OK: i32 = 0;

/// Close codes on `/ws`.
pub mod close {
    /// The server is shutting down; reconnect with backoff.
    pub const GOING_AWAY: u16 = 1001;
    /// A text frame that is not UTF-8.
    pub const INVALID_UTF8: u16 = 1007;
    /// A frame or message over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// Nothing (no pong, no frame) received for two heartbeat intervals.
    pub const HEARTBEAT_TIMEOUT: u16 = 4000;
    /// The socket's access token expired or its session was revoked.
    pub const AUTH_EXPIRED: u16 = 4001;
    /// The user opened more sockets than allowed; this, the oldest, is closed.
    pub const REPLACED: u16 = 4002;
    /// The client sent commands faster than allowed for too long.
    pub const RATE_LIMITED: u16 = 4003;
    /// The client did not read its events fast enough.
    pub const TOO_SLOW: u16 = 4004;
    /// The client broke the protocol in a way that cannot be answered: a
    /// frame that breaks RFC 6455 (unmasked, reserved bits or opcodes set, a
    /// fragmented or oversized control frame, a stray continuation).
    pub const PROTOCOL_VIOLATION: u16 = 4005;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_code_is_distinct_and_round_trips() {
        let mut seen = HashSet::new();
        for &c in ErrorCode::ALL {
            assert!(seen.insert(c.code()), "duplicate code {}", c.code());
            assert_eq!(ErrorCode::from_code(c.code()), Some(c));
            assert!((400..600).contains(&c.http_status()));
        }
    }

    #[test]
    fn codes_fixed_by_the_contract_keep_their_values() {
        let fixed = [
            (ErrorCode::LoginFailed, 1000, 500),
            (ErrorCode::InvalidPhone, 1001, 400),
            (ErrorCode::ExchangeFailed, 4000, 500),
            (ErrorCode::TokenMissing, 4001, 401),
            (ErrorCode::NotEnoughStock, 4004, 422),
            (ErrorCode::NotEnoughPoints, 4005, 422),
            (ErrorCode::UploadFailed, 5000, 500),
            (ErrorCode::NoImage, 5001, 400),
            (ErrorCode::InvalidAmount, 5002, 400),
            (ErrorCode::ReviewFailed, 6000, 500),
            (ErrorCode::AlreadyReviewed, 6004, 409),
        ];
        for (c, code, status) in fixed {
            assert_eq!((c.code(), c.http_status()), (code, status), "{c:?}");
        }
        assert_eq!(ErrorCode::TokenMissing.msg(), "缺少访问令牌");
    }
}
