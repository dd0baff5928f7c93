//! `page` and `page_size` of every list, from a query string or a socket
//! command alike.

use protocol::Pagination;
use serde::{Deserialize, Deserializer};

use crate::error::{Error, Result};

pub const MAX_PAGE_SIZE: u32 = 100;
pub const DEFAULT_PAGE_SIZE: u32 = 20;

/// A whole number as a client sent it, saturated at `u32::MAX`: a page
/// size of `1000000000000` is a large page size (clamped), not a type
/// error. Accepts JSON numbers and digit strings (query strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count(pub u32);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Count;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a whole number")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<Count, E> {
                Ok(Count(u32::try_from(v).unwrap_or(u32::MAX)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<Count, E> {
                u64::try_from(v)
                    .map(|v| Count(u32::try_from(v).unwrap_or(u32::MAX)))
                    .map_err(|_| E::custom("须为非负整数"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Count, E> {
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(E::custom("须为非负整数"));
                }
                let digits = v.trim_start_matches('0');
                Ok(Count(match digits.len() {
                    0 => 0,
                    1..=10 => digits
                        .parse::<u64>()
                        .map_or(u32::MAX, |n| u32::try_from(n).unwrap_or(u32::MAX)),
                    _ => u32::MAX,
                }))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// The paging fields of a list request.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub struct PageQuery {
    pub page: Option<Count>,
    pub page_size: Option<Count>,
    /// The seed's clients also send `limit`.
    pub limit: Option<Count>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub page: u32,
    pub size: u32,
}

impl PageQuery {
    /// `page` from 1, `page_size` from 1; a size above the cap is clamped
    /// (the response's `limit` shows the value used).
    pub fn resolve(&self) -> Result<Page> {
        let page = self.page.map_or(1, |c| c.0);
        if page == 0 {
            return Err(Error::invalid("page", "从 1 开始"));
        }
        let size = self
            .page_size
            .or(self.limit)
            .map_or(DEFAULT_PAGE_SIZE, |c| c.0);
        if size == 0 {
            return Err(Error::invalid("page_size", "至少为 1"));
        }
        Ok(Page {
            page,
            size: size.min(MAX_PAGE_SIZE),
        })
    }
}

impl Page {
    /// `OFFSET` of the page (cannot overflow: `u32 × 100` fits in `u64`).
    pub fn offset(&self) -> u64 {
        (self.page.saturating_sub(1) as u64) * self.size as u64
    }

    pub fn pagination(&self, total: u64) -> Pagination {
        Pagination {
            total,
            page: self.page,
            limit: self.size,
            total_pages: total.div_ceil(self.size as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_page_size_is_clamped_not_refused() {
        let q: PageQuery = serde_json::from_str(r#"{"page_size":1000000000000}"#).unwrap();
        assert_eq!(q.resolve().unwrap().size, MAX_PAGE_SIZE);
        let q: PageQuery =
            serde_json::from_str(r#"{"page_size":"99999999999999999999999"}"#).unwrap();
        assert_eq!(q.resolve().unwrap().size, MAX_PAGE_SIZE);
        let q: PageQuery = serde_json::from_str(r#"{"page":"4294967296"}"#).unwrap();
        assert_eq!(q.resolve().unwrap().page, u32::MAX);
        assert!(serde_json::from_str::<PageQuery>(r#"{"page":"-1"}"#).is_err());
        assert!(serde_json::from_str::<PageQuery>(r#"{"page":1.5}"#).is_err());
        let q: PageQuery = serde_json::from_str(r#"{"page":"0"}"#).unwrap();
        assert!(q.resolve().is_err(), "page 0 is refused, not saturated");
    }
}
