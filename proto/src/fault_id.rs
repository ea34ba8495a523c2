//! Fault ids: the one rule every side checks (runner, agent, injector). An id names nftables
//! chains and comments and state-file entries, so it is short and plain.

/// Longest fault id.
pub const MAX_FAULT_ID_LEN: usize = 64;

/// Checks a caller-chosen fault id: 1 to [`MAX_FAULT_ID_LEN`] characters from
/// `[A-Za-z0-9_.-]`. The error is one line naming the id and the rule.
pub fn validate_fault_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_FAULT_ID_LEN
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "fault id {id:?}: use 1-{MAX_FAULT_ID_LEN} characters from [A-Za-z0-9_.-]"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_short_ids_pass_and_others_are_named() {
        assert!(validate_fault_id("f-1.a_B").is_ok());
        assert!(validate_fault_id(&"x".repeat(MAX_FAULT_ID_LEN)).is_ok());
        for bad in ["", "a b", "a/b", "é", &"x".repeat(MAX_FAULT_ID_LEN + 1)] {
            let e = validate_fault_id(bad).unwrap_err();
            assert!(
                e.contains("[A-Za-z0-9_.-]") && e.contains(&format!("{bad:?}")),
                "{e}"
            );
        }
    }
}
