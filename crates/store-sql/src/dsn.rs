//! Datastore endpoints (DSNs) in k3s's forms.
//!
//! - PostgreSQL: `postgres://user:pass@host:port/db?sslmode=disable` (also `postgresql://`,
//!   any other libpq URL parameter tokio-postgres knows, e.g. `connect_timeout`). TLS as
//!   libpq: `sslmode` `disable`, `prefer` (the default: TLS if the server offers it),
//!   `require` (both verify nothing unless a CA file is given), `verify-ca`,
//!   `verify-full`; `sslrootcert`, `sslcert`, `sslkey` name PEM files.
//! - MySQL/MariaDB, Go driver style (what k3s documents):
//!   `mysql://user:pass@tcp(host:port)/db`, `mysql://user:pass@unix(/path/sock)/db`;
//!   and URL style: `mysql://user:pass@host:port/db` (user and password percent-decoded).
//!   TLS as the Go driver: `tls=true` (verify the certificate and name), `skip-verify`
//!   or `preferred` (TLS, nothing verified), `false`; without `tls`, TLS (verified) only
//!   if CA or client files are given to [`crate::SqlStore::connect_with`].
//!
//! A missing database name means `kubernetes` (kine's default). Parsing is pure: no I/O.

use std::str::FromStr;

use percent_encoding::percent_decode_str;

use crate::tls::TlsFiles;
use crate::SqlError;

/// The database used when the endpoint names none (kine's default).
pub const DEFAULT_DATABASE: &str = "kubernetes";

/// A parsed datastore endpoint.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// A PostgreSQL server.
    Postgres(Box<PostgresEndpoint>),
    /// A MySQL or MariaDB server.
    Mysql(MysqlEndpoint),
}

/// A PostgreSQL endpoint.
#[derive(Clone, Debug)]
pub struct PostgresEndpoint {
    /// Connection settings (host, port, user, password, database, ...).
    pub config: tokio_postgres::Config,
    /// libpq's `sslmode`.
    pub ssl_mode: PgSslMode,
    /// Files named by `sslrootcert`, `sslcert`, `sslkey`.
    pub files: TlsFiles,
}

/// libpq's `sslmode` values (`allow` is taken as `prefer`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PgSslMode {
    /// Plain connections only.
    Disable,
    /// TLS if the server offers it.
    Prefer,
    /// TLS; the certificate is checked only if a CA file is given.
    Require,
    /// TLS, certificate signed by the CA.
    VerifyCa,
    /// TLS, certificate signed by the CA and valid for the host name.
    VerifyFull,
}

/// The Go MySQL driver's `tls` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MysqlTls {
    /// No `tls` parameter: TLS (verified) only if TLS files are given.
    Unset,
    /// `tls=false`.
    Off,
    /// `tls=skip-verify` or `tls=preferred`: TLS, nothing verified.
    SkipVerify,
    /// `tls=true`: TLS, certificate and name verified.
    Verify,
}

impl PostgresEndpoint {
    /// The database the store lives in.
    pub fn database(&self) -> &str {
        self.config.get_dbname().unwrap_or(DEFAULT_DATABASE)
    }
}

/// Where a MySQL server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MysqlAddress {
    /// TCP host (name or IP, without brackets) and port.
    Tcp {
        /// Host name or IP address.
        host: String,
        /// TCP port.
        port: u16,
    },
    /// A Unix socket path.
    Unix(String),
}

/// A MySQL/MariaDB endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MysqlEndpoint {
    /// User name (`root` when empty).
    pub user: String,
    /// Password, if any.
    pub password: Option<String>,
    /// Server address.
    pub address: MysqlAddress,
    /// Database name.
    pub database: String,
    /// The `tls` parameter.
    pub tls: MysqlTls,
}

/// True if `endpoint` names a PostgreSQL or MySQL datastore (by its scheme).
pub fn is_sql_endpoint(endpoint: &str) -> bool {
    scheme(endpoint).is_some()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Postgres,
    Mysql,
}

fn scheme(endpoint: &str) -> Option<(Scheme, &str)> {
    for (prefix, scheme) in [
        ("postgres://", Scheme::Postgres),
        ("postgresql://", Scheme::Postgres),
        ("mysql://", Scheme::Mysql),
        ("mariadb://", Scheme::Mysql),
    ] {
        if endpoint.len() >= prefix.len()
            && endpoint.is_char_boundary(prefix.len())
            && endpoint[..prefix.len()].eq_ignore_ascii_case(prefix)
        {
            return Some((scheme, &endpoint[prefix.len()..]));
        }
    }
    None
}

impl FromStr for Endpoint {
    type Err = SqlError;

    fn from_str(endpoint: &str) -> Result<Endpoint, SqlError> {
        match scheme(endpoint) {
            Some((Scheme::Postgres, rest)) => {
                parse_postgres(rest).map(|p| Endpoint::Postgres(Box::new(p)))
            }
            Some((Scheme::Mysql, rest)) => parse_mysql(rest).map(Endpoint::Mysql),
            None => Err(SqlError::InvalidEndpoint(
                "expected postgres://, postgresql:// or mysql://".to_string(),
            )),
        }
    }
}

fn parse_postgres(rest: &str) -> Result<PostgresEndpoint, SqlError> {
    // tokio-postgres knows neither the verify modes nor the file parameters: take the
    // TLS parameters out and hand it the rest.
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut ssl_mode = PgSslMode::Prefer;
    let mut files = TlsFiles::default();
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let file = || decode(value, name).map(|v| Some(std::path::PathBuf::from(v)));
        match name {
            "sslmode" => {
                ssl_mode = match value {
                    "disable" => PgSslMode::Disable,
                    "allow" | "prefer" => PgSslMode::Prefer,
                    "require" => PgSslMode::Require,
                    "verify-ca" => PgSslMode::VerifyCa,
                    "verify-full" => PgSslMode::VerifyFull,
                    _ => {
                        return Err(SqlError::InvalidEndpoint(format!(
                            "postgres: invalid sslmode {value:?}"
                        )))
                    }
                }
            }
            "sslrootcert" => files.ca_file = file()?,
            "sslcert" => files.cert_file = file()?,
            "sslkey" => files.key_file = file()?,
            _ => kept.push(pair),
        }
    }
    let url = match kept.is_empty() {
        true => format!("postgresql://{main}"),
        false => format!("postgresql://{main}?{}", kept.join("&")),
    };
    let mut config = tokio_postgres::Config::from_str(&url)
        .map_err(|e| SqlError::InvalidEndpoint(format!("postgres: {e}")))?;
    if config.get_hosts().is_empty() {
        config.host("localhost");
    }
    if config.get_user().is_none() {
        config.user("postgres");
    }
    if config.get_dbname().is_none_or(str::is_empty) {
        config.dbname(DEFAULT_DATABASE);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(10));
    }
    if config.get_application_name().is_none() {
        config.application_name("rk3s");
    }
    Ok(PostgresEndpoint {
        config,
        ssl_mode,
        files,
    })
}

fn decode(part: &str, what: &str) -> Result<String, SqlError> {
    percent_decode_str(part)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| SqlError::InvalidEndpoint(format!("mysql: {what} is not UTF-8")))
}

fn split_host_port(addr: &str) -> Result<(String, u16), SqlError> {
    let invalid = || SqlError::InvalidEndpoint(format!("mysql: invalid address {addr:?}"));
    let (host, port) = if let Some(bracketed) = addr.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or_else(invalid)?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':').ok_or_else(invalid)?)),
        }
    } else if addr.matches(':').count() > 1 {
        // A bare IPv6 address without port.
        (addr, None)
    } else {
        match addr.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (addr, None),
        }
    };
    let port = match port {
        Some(port) => port.parse::<u16>().map_err(|_| invalid())?,
        None => 3306,
    };
    let host = if host.is_empty() { "127.0.0.1" } else { host };
    Ok((host.to_string(), port))
}

fn parse_mysql(rest: &str) -> Result<MysqlEndpoint, SqlError> {
    let (main, query) = match rest.split_once('?') {
        Some((main, query)) => (main, Some(query)),
        None => (rest, None),
    };
    // The database name follows the last '/' (a password may contain '/', a name not).
    let (authority, database) = match main.rfind('/') {
        Some(slash) => (&main[..slash], &main[slash + 1..]),
        None => (main, ""),
    };
    // Go style keeps user and password verbatim; URL style percent-encodes them.
    let go_style = authority.ends_with(')');
    let (userinfo, net_addr) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };
    let (mut user, mut password) = (String::new(), None);
    if let Some(userinfo) = userinfo {
        let (u, p) = match userinfo.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (userinfo, None),
        };
        if go_style {
            user = u.to_string();
            password = p.map(str::to_string);
        } else {
            user = decode(u, "user")?;
            password = p.map(|p| decode(p, "password")).transpose()?;
        }
    }
    if user.is_empty() {
        user = "root".to_string();
    }
    let address = if go_style {
        let open = net_addr
            .find('(')
            .ok_or_else(|| SqlError::InvalidEndpoint("mysql: unbalanced '('".into()))?;
        let net = &net_addr[..open];
        let addr = &net_addr[open + 1..net_addr.len() - 1];
        match net {
            "tcp" | "tcp4" | "tcp6" => {
                let (host, port) = split_host_port(addr)?;
                MysqlAddress::Tcp { host, port }
            }
            "unix" if !addr.is_empty() => MysqlAddress::Unix(addr.to_string()),
            _ => {
                return Err(SqlError::InvalidEndpoint(format!(
                    "mysql: unsupported network {net:?} (tcp or unix)"
                )))
            }
        }
    } else if net_addr == "tcp" || net_addr.is_empty() {
        MysqlAddress::Tcp {
            host: "127.0.0.1".into(),
            port: 3306,
        }
    } else {
        let (host, port) = split_host_port(net_addr)?;
        MysqlAddress::Tcp { host, port }
    };
    let database = decode(database, "database")?;
    if database.contains('`') {
        return Err(SqlError::InvalidEndpoint(
            "mysql: database name contains '`'".into(),
        ));
    }
    let mut tls = MysqlTls::Unset;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "tls" => {
                tls = match value.to_ascii_lowercase().as_str() {
                    "false" | "0" => MysqlTls::Off,
                    "true" | "1" => MysqlTls::Verify,
                    "skip-verify" | "preferred" => MysqlTls::SkipVerify,
                    _ => {
                        return Err(SqlError::InvalidEndpoint(format!(
                            "mysql: unsupported tls={value} (true, skip-verify, preferred, false)"
                        )))
                    }
                }
            }
            _ => tracing::debug!(parameter = name, "ignoring mysql endpoint parameter"),
        }
    }
    Ok(MysqlEndpoint {
        user,
        password,
        address,
        database: if database.is_empty() {
            DEFAULT_DATABASE.to_string()
        } else {
            database
        },
        tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mysql(dsn: &str) -> MysqlEndpoint {
        match dsn.parse::<Endpoint>() {
            Ok(Endpoint::Mysql(m)) => m,
            other => panic!("{dsn}: {other:?}"),
        }
    }

    fn postgres(dsn: &str) -> tokio_postgres::Config {
        match dsn.parse::<Endpoint>() {
            Ok(Endpoint::Postgres(p)) => p.config,
            other => panic!("{dsn}: {other:?}"),
        }
    }

    #[test]
    fn mysql_go_style_tcp() {
        let m = mysql("mysql://k3s:s3cr%t@/x@tcp(db.example:3307)/cluster");
        assert_eq!(m.user, "k3s");
        assert_eq!(m.password.as_deref(), Some("s3cr%t@/x"));
        assert_eq!(
            m.address,
            MysqlAddress::Tcp {
                host: "db.example".into(),
                port: 3307
            }
        );
        assert_eq!(m.database, "cluster");
    }

    #[test]
    fn mysql_go_style_defaults_and_ipv6() {
        let m = mysql("mysql://root@tcp([::1])/");
        assert_eq!(m.password, None);
        assert_eq!(
            m.address,
            MysqlAddress::Tcp {
                host: "::1".into(),
                port: 3306
            }
        );
        assert_eq!(m.database, DEFAULT_DATABASE);
        let m = mysql("mysql://u:p@unix(/run/mysqld/mysqld.sock)/k");
        assert_eq!(
            m.address,
            MysqlAddress::Unix("/run/mysqld/mysqld.sock".into())
        );
        let m = mysql("mysql://tcp(127.0.0.1:3306)/k?parseTime=true&tls=false");
        assert_eq!(m.user, "root");
        assert_eq!(m.database, "k");
    }

    #[test]
    fn mysql_url_style() {
        let m = mysql("mysql://user:p%40ss@10.0.0.5:3310/db1");
        assert_eq!(m.user, "user");
        assert_eq!(m.password.as_deref(), Some("p@ss"));
        assert_eq!(
            m.address,
            MysqlAddress::Tcp {
                host: "10.0.0.5".into(),
                port: 3310
            }
        );
        assert_eq!(m.database, "db1");
        let m = mysql("mariadb://[fe80::1]:3306");
        assert_eq!(
            m.address,
            MysqlAddress::Tcp {
                host: "fe80::1".into(),
                port: 3306
            }
        );
        assert_eq!(m.database, DEFAULT_DATABASE);
    }

    #[test]
    fn mysql_errors() {
        for bad in [
            "mysql://u:p@tcp(h:notaport)/d",
            "mysql://u:p@udp(h:1)/d",
            "mysql://u:p@h:99999/d",
            "mysql://u@tcp(h)/we`ird",
        ] {
            assert!(
                matches!(bad.parse::<Endpoint>(), Err(SqlError::InvalidEndpoint(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            "mysql://u@tcp(h)/d?tls=custom".parse::<Endpoint>(),
            Err(SqlError::InvalidEndpoint(_))
        ));
        assert_eq!(mysql("mysql://u@tcp(h)/d?tls=true").tls, MysqlTls::Verify);
        assert_eq!(
            mysql("mysql://u@tcp(h)/d?tls=skip-verify").tls,
            MysqlTls::SkipVerify
        );
        assert_eq!(mysql("mysql://u@tcp(h)/d").tls, MysqlTls::Unset);
    }

    #[test]
    fn postgres_forms() {
        let c = postgres("postgres://k3s:pw@db:5433/cluster?sslmode=disable");
        assert_eq!(c.get_user(), Some("k3s"));
        assert_eq!(c.get_password(), Some(&b"pw"[..]));
        assert_eq!(c.get_ports(), &[5433]);
        assert_eq!(c.get_dbname(), Some("cluster"));
        assert_eq!(
            c.get_hosts(),
            &[tokio_postgres::config::Host::Tcp("db".into())]
        );
        let c = postgres("postgresql://127.0.0.1");
        assert_eq!(c.get_dbname(), Some(DEFAULT_DATABASE));
        assert_eq!(c.get_user(), Some("postgres"));
        assert!(matches!(
            "postgres://u@h/d?sslmode=bogus".parse::<Endpoint>(),
            Err(SqlError::InvalidEndpoint(_))
        ));
        let Ok(Endpoint::Postgres(p)) = "postgres://u@h:5/d?connect_timeout=3&sslmode=verify-full&sslrootcert=/etc/ca%20x.pem&sslcert=/c&sslkey=/k"
            .parse::<Endpoint>()
        else {
            panic!("verify-full endpoint")
        };
        assert_eq!(p.ssl_mode, PgSslMode::VerifyFull);
        assert_eq!(
            p.files.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/ca x.pem"))
        );
        assert_eq!(
            p.files.key_file.as_deref(),
            Some(std::path::Path::new("/k"))
        );
        assert_eq!(
            p.config.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(3))
        );
        let Ok(Endpoint::Postgres(p)) = "postgres://u@h/d".parse::<Endpoint>() else {
            panic!("plain endpoint")
        };
        assert_eq!(p.ssl_mode, PgSslMode::Prefer);
    }

    #[test]
    fn schemes() {
        assert!(is_sql_endpoint("POSTGRES://x"));
        assert!(is_sql_endpoint("mysql://x"));
        assert!(!is_sql_endpoint("sqlite:///var/lib/x.db"));
        assert!(!is_sql_endpoint("https://etcd:2379"));
        assert!(!is_sql_endpoint("mysql:/"));
        assert!(matches!(
            "etcd://x".parse::<Endpoint>(),
            Err(SqlError::InvalidEndpoint(_))
        ));
    }
}
