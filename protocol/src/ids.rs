//! Identifiers and statuses that say what they are.
//!
//! On the wire an id is a plain JSON number (or string) and a status a
//! lowercase string, exactly as before; in code a `UserId` cannot be passed
//! where a `ProductId` is meant, and a status is an enum, never a string
//! compared by hand. With the `sqlx` feature each maps to its MySQL column
//! (ids to their integer columns, statuses to `ENUM`/`VARCHAR` columns).

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! int_id {
    ($(#[$doc:meta])* $name:ident($int:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        #[cfg_attr(feature = "sqlx", derive(sqlx::Type), sqlx(transparent))]
        pub struct $name(pub $int);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<$int> for $name {
            fn from(v: $int) -> Self {
                $name(v)
            }
        }
    };
}

int_id!(
    /// A guest or merchant (`users.user_id`).
    UserId(u64)
);
int_id!(
    /// A login session, the family of its refresh tokens (`auth_sessions`).
    SessionId(u64)
);
int_id!(
    /// A product of the exchange catalogue (`products.product_id`).
    ProductId(u32)
);
int_id!(
    /// A prize of the wheel (`lottery_prizes.prize_id`).
    PrizeId(u32)
);

/// A receipt upload: a ULID string (`photo_uploads.upload_id`).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
#[cfg_attr(feature = "sqlx", derive(sqlx::Type), sqlx(transparent))]
pub struct UploadId(pub String);

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl UploadId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A closed set of lowercase names: the enum, its wire and column spelling,
/// parsing, serde, and (with `sqlx`) the column mapping through `str`, which
/// reads both MySQL `ENUM` and `VARCHAR` columns.
macro_rules! name_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            pub fn parse(s: &str) -> Option<$name> {
                match s {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// The names, for messages: `a、b 或 c`.
            pub fn names() -> String {
                let names: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                match names.split_last() {
                    Some((last, rest)) if !rest.is_empty() => format!("{} 或 {last}", rest.join("、")),
                    _ => names.join(""),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                $name::parse(&s).ok_or_else(|| {
                    serde::de::Error::custom(format!("须为 {}", $name::names()))
                })
            }
        }

        #[cfg(feature = "sqlx")]
        impl sqlx::Type<sqlx::MySql> for $name {
            fn type_info() -> sqlx::mysql::MySqlTypeInfo {
                <str as sqlx::Type<sqlx::MySql>>::type_info()
            }
            fn compatible(ty: &sqlx::mysql::MySqlTypeInfo) -> bool {
                <str as sqlx::Type<sqlx::MySql>>::compatible(ty)
            }
        }

        #[cfg(feature = "sqlx")]
        impl<'r> sqlx::Decode<'r, sqlx::MySql> for $name {
            fn decode(value: sqlx::mysql::MySqlValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let s = <&str as sqlx::Decode<sqlx::MySql>>::decode(value)?;
                $name::parse(s).ok_or_else(|| format!("unknown {} {s:?}", stringify!($name)).into())
            }
        }

        #[cfg(feature = "sqlx")]
        impl<'q> sqlx::Encode<'q, sqlx::MySql> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut Vec<u8>,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<sqlx::MySql>>::encode_by_ref(&self.as_str(), buf)
            }
        }
    };
}

name_enum!(
    /// Whether an account may act (`users.status`).
    UserStatus {
        Active = "active",
        Inactive = "inactive",
        Banned = "banned",
    }
);

name_enum!(
    /// Whether guests see a product (`products.status`).
    ProductStatus {
        Active = "active",
        Inactive = "inactive",
    }
);

name_enum!(
    /// Where a receipt upload stands (`photo_uploads.review_status`).
    ReviewStatus {
        Pending = "pending",
        Approved = "approved",
        Rejected = "rejected",
    }
);

name_enum!(
    /// What a merchant does with an upload.
    ReviewAction {
        Approve = "approve",
        Reject = "reject",
    }
);

name_enum!(
    /// An exchange order before and after the counter (`exchange_orders.status`).
    OrderStatus {
        Pending = "pending",
        Redeemed = "redeemed",
    }
);

name_enum!(
    /// What a prize is (`lottery_prizes.prize_type`).
    PrizeType {
        Points = "points",
        Coupon = "coupon",
        Physical = "physical",
        Empty = "empty",
    }
);

name_enum!(
    /// The direction of a ledger line (`points_records.type`).
    EntryKind {
        Earn = "earn",
        Spend = "spend",
    }
);

name_enum!(
    /// Where points came from or went (`points_records.source`).
    Source {
        Register = "register",
        /// A draw's cost.
        Lottery = "lottery",
        /// Points won on the wheel.
        LotteryPrize = "lottery_prize",
        Exchange = "exchange",
        PhotoUpload = "photo_upload",
        Admin = "admin",
    }
);

name_enum!(
    /// Why a product's stock changed (`stock_changes.operation`).
    StockOperation {
        Create = "create",
        Purchase = "purchase",
        Restock = "restock",
        AdminAdjust = "admin_adjust",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_statuses_keep_their_wire_form() {
        assert_eq!(serde_json::to_string(&UserId(7)).unwrap(), "7");
        assert_eq!(
            serde_json::from_str::<ProductId>("12").unwrap(),
            ProductId(12)
        );
        assert_eq!(
            serde_json::to_string(&StockOperation::AdminAdjust).unwrap(),
            "\"admin_adjust\""
        );
        assert_eq!(
            serde_json::from_str::<ReviewAction>("\"reject\"").unwrap(),
            ReviewAction::Reject
        );
        let err = serde_json::from_str::<ReviewAction>("\"maybe\"").unwrap_err();
        assert!(err.to_string().contains("须为 approve 或 reject"), "{err}");
    }

    #[test]
    fn every_name_parses_back() {
        for s in Source::ALL {
            assert_eq!(Source::parse(s.as_str()), Some(*s));
        }
        assert_eq!(ReviewStatus::names(), "pending、approved 或 rejected");
    }
}
