//! The domain's enums as PostgreSQL text values (the `sql` feature, which herald-store turns on).
//! A value the database holds that is not one of the enum's is an error when read, never a
//! default: a corrupt row must not pass for a final status.

/// Implements `ToSql` and `FromSql` for `$type` as text, through its `as_str` and `parse`.
macro_rules! text_value {
    ($type:ty, $what:literal) => {
        impl postgres_types::ToSql for $type {
            fn to_sql(
                &self,
                ty: &postgres_types::Type,
                out: &mut bytes::BytesMut,
            ) -> Result<postgres_types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
                self.as_str().to_sql(ty, out)
            }

            fn accepts(ty: &postgres_types::Type) -> bool {
                <&str as postgres_types::ToSql>::accepts(ty)
            }

            postgres_types::to_sql_checked!();
        }

        impl<'a> postgres_types::FromSql<'a> for $type {
            fn from_sql(
                ty: &postgres_types::Type,
                raw: &'a [u8],
            ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
                let text = <&str as postgres_types::FromSql>::from_sql(ty, raw)?;
                <$type>::parse(text)
                    .ok_or_else(|| format!("unknown {} `{}` in the database", $what, text.escape_debug()).into())
            }

            fn accepts(ty: &postgres_types::Type) -> bool {
                <&str as postgres_types::FromSql>::accepts(ty)
            }
        }
    };
}

text_value!(crate::Channel, "channel");
text_value!(crate::delivery::DeliveryStatus, "delivery status");
text_value!(crate::execution::ExecutionState, "execution state");
text_value!(crate::report::ReportEvent, "report event");

#[cfg(test)]
mod tests {
    use postgres_types::{FromSql, ToSql, Type};

    use crate::Channel;
    use crate::delivery::DeliveryStatus;

    #[test]
    fn values_round_trip_and_unknown_ones_are_errors() {
        let mut out = bytes::BytesMut::new();
        DeliveryStatus::Sent.to_sql(&Type::TEXT, &mut out).unwrap();
        assert_eq!(DeliveryStatus::from_sql(&Type::TEXT, &out).unwrap(), DeliveryStatus::Sent);
        let error = DeliveryStatus::from_sql(&Type::TEXT, b"snet").unwrap_err();
        assert!(error.to_string().contains("unknown delivery status `snet`"), "{error}");
        assert!(Channel::from_sql(&Type::TEXT, b"fax").is_err());
        assert!(!<Channel as ToSql>::accepts(&Type::INT4));
    }
}
