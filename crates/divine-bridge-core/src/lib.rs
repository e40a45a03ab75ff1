//! The vocabulary every Divine bridge crate shares, with no I/O and no heavy dependency: how an error is classified
//! ([`Classified`], [`ErrorClass`]), every stable error code ([`ErrorCode`]), and the closed sets of job kinds and
//! states stored in Postgres ([`states`]).
//!
//! Why a crate of its own: the protocol crates (`divine-atproto`, `divine-nostr`) classify their errors with these
//! types, and they must not link Diesel and libpq to do it. `divine-bridge-db` re-exports `class` and `states`, so
//! `divine_bridge_db::{Classified, JobState, ...}` keeps working.

/// A closed set of values with a stable `snake_case` spelling: the enum, `ALL` (declaration order), `const
/// as_str`, `Display` and a `FromStr` that refuses anything else with [`UnknownValue`]. The one definition behind
/// [`ErrorCode`], [`ReasonLabel`] and the stored states and kinds; `serde:` in front adds serde in that spelling.
macro_rules! string_enum {
    (serde: $(#[$m:meta])* $name:ident $body:tt) => {
        string_enum!(
            $(#[$m])*
            #[derive(serde::Serialize, serde::Deserialize)]
            #[serde(rename_all = "snake_case")]
            $name $body
        );
    };
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stable `snake_case` spelling (stored in Postgres, logged, shown to operators).
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.as_str()) }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::states::UnknownValue;
            fn from_str(s: &str) -> Result<Self, $crate::states::UnknownValue> {
                match s {
                    $($s => Ok($name::$variant),)+
                    other => Err($crate::states::UnknownValue(stringify!($name), other.to_string())),
                }
            }
        }
    };
}

pub mod class;
pub mod code;
pub mod states;

pub use class::{Classified, ErrorClass};
pub use code::{ErrorCode, ReasonLabel};
pub use states::{AuditAction, JobKind, JobState, ProvisioningState, RecordState, UnknownValue};
