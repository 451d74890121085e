//! Unit tests of the MySQL adapter (`mysql.rs`).

use super::errors::map_server_error;
use super::*;

#[test]
fn server_errors_map_to_port_errors() {
    let map = |code, state: &str| map_server_error(code, state, "m".into());
    assert!(matches!(map(1062, "23000"), SqlError::Constraint(_)));
    assert!(matches!(map(1452, "23000"), SqlError::Constraint(_)));
    assert!(matches!(map(1048, "23000"), SqlError::Constraint(_)));
    assert!(matches!(map(4025, "23000"), SqlError::Constraint(_)));
    assert!(matches!(map(3819, "HY000"), SqlError::Constraint(_)));
    assert!(matches!(map(1064, "42000"), SqlError::Syntax(_)));
    assert!(matches!(map(1146, "42S02"), SqlError::Syntax(_)));
    assert!(matches!(map(1054, "42S22"), SqlError::Syntax(_)));
    // Access errors share SQLSTATE 42000 with parse errors.
    assert!(matches!(map(1142, "42000"), SqlError::Denied(_)));
    assert_eq!(map(1969, "70100"), SqlError::Timeout);
    assert_eq!(map(3024, "HY000"), SqlError::Timeout);
    assert!(matches!(map(1213, "40001"), SqlError::Conflict(_)));
    assert!(matches!(map(1927, "70100"), SqlError::Unavailable(_)));
    assert!(matches!(map(1406, "22001"), SqlError::InvalidInput(_)));
}

#[test]
fn session_setup_sets_utc_and_the_timeout_per_server() {
    assert_eq!(
        session_setup(Flavor::MariaDb, Duration::from_millis(300)),
        "SET SESSION time_zone = '+00:00', max_statement_time = 0.300"
    );
    assert_eq!(
        session_setup(Flavor::MariaDb, Duration::from_secs(30)),
        "SET SESSION time_zone = '+00:00', max_statement_time = 30.000"
    );
    assert_eq!(
        session_setup(Flavor::Mysql, Duration::from_millis(300)),
        "SET SESSION time_zone = '+00:00', max_execution_time = 300"
    );
}

#[test]
fn global_privileges_are_read_from_the_grants() {
    let grants = |lines: &[&str]| lines.iter().map(|l| l.to_string()).collect::<Vec<_>>();
    assert_eq!(
        global_privileges(&grants(&[
            "GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` IDENTIFIED BY PASSWORD '*81F5'",
        ])),
        Some("ALL PRIVILEGES")
    );
    assert_eq!(
        global_privileges(&grants(&[
            "GRANT USAGE ON *.* TO `berth`@`%`",
            "GRANT SELECT, INSERT ON `orders`.* TO `berth`@`%`",
        ])),
        None
    );
    assert_eq!(
        global_privileges(&grants(&[
            "GRANT USAGE ON *.* TO `b`@`%`",
            "GRANT FILE ON *.* TO `b`@`%`"
        ])),
        Some("FILE")
    );
}
