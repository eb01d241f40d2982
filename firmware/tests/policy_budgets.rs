//! The policy table and its token buckets, on their own.

mod common;
use common::*;

use etee_custody::config::MAX_POLICY_RULES;
use etee_custody::policy::{Budget, Denial, KeyUse, Policy, PolicyError};

#[test]
fn default_deny() {
    let p = Policy::deny_all();
    assert_eq!(
        p.permit(&app(), &auth(), KeyUse::Sign).unwrap_err(),
        Denial::Denied
    );
    assert_eq!(
        policy()
            .permit(&app(), &auth(), KeyUse::Decrypt)
            .unwrap_err(),
        Denial::Denied
    );
    assert!(policy().permit(&app(), &auth(), KeyUse::Sign).is_ok());
}

#[test]
fn one_rule_per_client_and_key_and_a_bounded_table() {
    let mut p = policy();
    assert_eq!(
        p.allow(rule(app(), auth(), false, true, GENEROUS)),
        Err(PolicyError::Duplicate)
    );
    let mut p = Policy::deny_all();
    for i in 0..MAX_POLICY_RULES {
        p.allow(rule(
            client(&format!("c{i}")),
            auth(),
            true,
            false,
            GENEROUS,
        ))
        .unwrap();
    }
    assert_eq!(
        p.allow(rule(app(), auth(), true, false, GENEROUS)),
        Err(PolicyError::Full)
    );
    assert_eq!(p.rules().count(), MAX_POLICY_RULES);
}

fn spend(p: &mut Policy, now: u64) -> Result<(), Denial> {
    let grant = p.permit(&app(), &auth(), KeyUse::Sign)?;
    p.spend(grant, now)
}

fn with_budget(burst: u32, per_second: u32) -> Policy {
    let mut p = Policy::deny_all();
    p.allow(rule(
        app(),
        auth(),
        true,
        false,
        Budget { burst, per_second },
    ))
    .unwrap();
    p
}

#[test]
fn bucket_refills_at_the_rate_up_to_the_burst() {
    let mut p = with_budget(3, 10); // one use per 100 ms
    for _ in 0..3 {
        spend(&mut p, 0).unwrap();
    }
    assert_eq!(
        spend(&mut p, 0),
        Err(Denial::RateLimited {
            retry_after_ms: 100
        })
    );
    assert_eq!(
        spend(&mut p, 30),
        Err(Denial::RateLimited { retry_after_ms: 70 })
    );
    spend(&mut p, 100).unwrap();
    // A long pause refills to the burst, no more.
    for _ in 0..3 {
        spend(&mut p, 1_000_000).unwrap();
    }
    assert!(spend(&mut p, 1_000_000).is_err());
}

#[test]
fn a_clock_going_back_refills_nothing() {
    let mut p = with_budget(1, 1);
    spend(&mut p, 5_000).unwrap();
    assert!(spend(&mut p, 0).is_err());
    assert!(spend(&mut p, 5_500).is_err());
    spend(&mut p, 6_000).unwrap();
}

#[test]
fn zero_rate_is_a_total() {
    let mut p = with_budget(2, 0);
    spend(&mut p, 0).unwrap();
    spend(&mut p, u64::MAX).unwrap();
    assert_eq!(
        spend(&mut p, u64::MAX),
        Err(Denial::RateLimited {
            retry_after_ms: u64::MAX
        })
    );
    let mut p = with_budget(0, 5);
    assert_eq!(
        spend(&mut p, 1_000),
        Err(Denial::RateLimited {
            retry_after_ms: u64::MAX
        })
    );
}

#[test]
fn extreme_values_do_not_overflow() {
    let mut p = with_budget(u32::MAX, u32::MAX);
    spend(&mut p, 0).unwrap();
    spend(&mut p, u64::MAX).unwrap();
    spend(&mut p, u64::MAX).unwrap();
}
