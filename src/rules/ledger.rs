//! A points balance and the ledger lines that move it, as values: the
//! arithmetic every points-changing command shares. The database side
//! (`domain::account`) locks the row, feeds this, and writes what it says.

use protocol::{EntryKind, Source};

/// One ledger line to write; `points` is positive, `kind` gives the sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: EntryKind,
    pub points: i64,
    pub balance_after: i64,
    pub source: Source,
    pub description: String,
    pub related_id: Option<String>,
}

/// What a spend would need, when the balance is short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shortage {
    pub required: i64,
    pub current: i64,
}

/// A balance being changed in one transaction: it never goes below zero,
/// and every movement leaves one line whose `balance_after` is the balance
/// at that point.
#[derive(Debug, Clone)]
pub struct Ledger {
    opening: i64,
    balance: i64,
    entries: Vec<Entry>,
}

impl Ledger {
    pub fn new(balance: i64) -> Ledger {
        Ledger {
            opening: balance,
            balance,
            entries: Vec::new(),
        }
    }

    pub fn balance(&self) -> i64 {
        self.balance
    }

    /// The net change since the ledger was opened (what `points_update`
    /// reports as `change_points`).
    pub fn change(&self) -> i64 {
        self.balance - self.opening
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn moved(&self) -> bool {
        !self.entries.is_empty()
    }

    /// Takes `points` (> 0) or refuses, changing nothing, when the balance
    /// is short.
    pub fn spend(
        &mut self,
        points: i64,
        source: Source,
        description: String,
        related_id: Option<String>,
    ) -> Result<(), Shortage> {
        if points <= 0 {
            return Ok(());
        }
        if points > self.balance {
            return Err(Shortage {
                required: points,
                current: self.balance,
            });
        }
        self.balance -= points;
        self.push(EntryKind::Spend, points, source, description, related_id);
        Ok(())
    }

    /// Adds `points`; zero or less adds nothing (a prize worth no points
    /// leaves no line).
    pub fn earn(
        &mut self,
        points: i64,
        source: Source,
        description: String,
        related_id: Option<String>,
    ) {
        if points <= 0 {
            return;
        }
        self.balance += points;
        self.push(EntryKind::Earn, points, source, description, related_id);
    }

    fn push(
        &mut self,
        kind: EntryKind,
        points: i64,
        source: Source,
        description: String,
        related_id: Option<String>,
    ) {
        self.entries.push(Entry {
            kind,
            points,
            balance_after: self.balance,
            source,
            description,
            related_id,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_spend_beyond_the_balance_is_refused_and_changes_nothing() {
        let mut l = Ledger::new(50);
        assert_eq!(
            l.spend(100, Source::Lottery, "draw".into(), None),
            Err(Shortage {
                required: 100,
                current: 50
            })
        );
        assert_eq!((l.balance(), l.entries().len()), (50, 0));
    }

    proptest! {
        /// Whatever is asked of it, a balance never goes negative, each
        /// line's `balance_after` is the running balance, and the balance
        /// is the opening plus what was earned minus what was spent.
        #[test]
        fn a_balance_never_goes_negative_and_the_lines_add_up(
            opening in 0i64..1_000_000,
            moves in proptest::collection::vec((any::<bool>(), -10i64..200_000), 0..60),
        ) {
            let mut l = Ledger::new(opening);
            for (earn, points) in moves {
                let before = l.balance();
                if earn {
                    l.earn(points, Source::Admin, String::new(), None);
                } else if l.spend(points, Source::Exchange, String::new(), None).is_err() {
                    prop_assert!(points > before);
                    prop_assert_eq!(l.balance(), before);
                }
                prop_assert!(l.balance() >= 0);
            }
            let mut running = opening;
            for e in l.entries() {
                prop_assert!(e.points > 0);
                running += match e.kind { EntryKind::Earn => e.points, EntryKind::Spend => -e.points };
                prop_assert_eq!(e.balance_after, running);
                prop_assert!(e.balance_after >= 0);
            }
            prop_assert_eq!(running, l.balance());
            prop_assert_eq!(l.change(), l.balance() - opening);
        }
    }
}
