//! Raising the open-files limit (its own test binary: it changes a process-wide limit).

use mooncake_sys::open_files::{
    open_files_limit, raise_open_files_limit, set_open_files_soft_limit,
};

#[test]
fn a_lowered_soft_limit_is_raised_to_the_hard_limit() {
    let (_, hard) = open_files_limit().unwrap();
    assert!(hard > 64, "hard limit {hard} too low for this test");
    set_open_files_soft_limit(64).unwrap();
    assert_eq!(open_files_limit().unwrap(), (64, hard));
    assert_eq!(raise_open_files_limit().unwrap(), hard);
    assert_eq!(open_files_limit().unwrap(), (hard, hard));
    // Already there: nothing to change.
    assert_eq!(raise_open_files_limit().unwrap(), hard);
}
