//! What a client is told to dial: `host:port` (that one server),
//! `proglog://host:port[,host:port...]` or `proglog:///host:port` (the cluster,
//! through the leader-aware client; the hosts are seeds).

/// A server address: host (IPv6 without brackets) and port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Authority {
    /// Host name or IP address.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl Authority {
    /// `host:port`, with an IPv6 host in brackets.
    pub fn to_addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("expected host:port".into());
        }
        if text.contains(['/', '?', '#', '@']) || text.chars().any(char::is_whitespace) {
            return Err("expected host:port".into());
        }
        let (host, port) = if let Some(bracketed) = text.strip_prefix('[') {
            let (host, rest) = bracketed.split_once(']').ok_or("unclosed '[' in the host")?;
            (host, rest.strip_prefix(':').ok_or("expected host:port")?)
        } else {
            let (host, port) = text.rsplit_once(':').ok_or("expected host:port")?;
            if host.contains(':') {
                return Err("put an IPv6 address in brackets, as in [::1]:8400".into());
            }
            (host, port)
        };
        if host.is_empty() {
            return Err("the host is empty".into());
        }
        match port.parse::<u16>() {
            Ok(port) if port > 0 => Ok(Self { host: host.to_owned(), port }),
            _ => Err(format!("'{port}' is not a port number")),
        }
    }
}

/// A parsed address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The servers named (seeds, for a cluster).
    pub seeds: Vec<Authority>,
    /// `proglog://`: discover the cluster and pick a server per call; plain
    /// `host:port`: always that one server.
    pub cluster: bool,
}

impl Target {
    /// Parses `host:port`, `proglog://host:port[,host:port...]` or
    /// `proglog:///host:port` (IPv6 hosts in brackets). The error says why.
    pub fn parse(addr: &str) -> Result<Self, String> {
        let (rest, cluster) = match addr.split_once("://") {
            Some(("proglog", rest)) => (rest.strip_prefix('/').unwrap_or(rest), true),
            Some((scheme, _)) => {
                return Err(format!("unsupported scheme '{scheme}' (use host:port or proglog://host:port)"));
            }
            None => (addr, false),
        };
        if !cluster && rest.contains(',') {
            return Err("several servers need the proglog:// form".into());
        }
        let seeds = rest.split(',').map(Authority::parse).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { seeds, cluster })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_parse_and_mistakes_say_why() {
        let one = Target::parse("localhost:8400").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((one.seeds[0].to_addr(), one.cluster), ("localhost:8400".to_owned(), false));
        for cluster in ["proglog://a:1,b:2", "proglog:///a:1,b:2"] {
            let target = Target::parse(cluster).unwrap_or_else(|e| panic!("{e}"));
            assert!(target.cluster);
            assert_eq!(target.seeds.iter().map(Authority::to_addr).collect::<Vec<_>>(), ["a:1", "b:2"]);
        }
        assert_eq!(Target::parse("[::1]:8400").map(|t| t.seeds[0].to_addr()), Ok("[::1]:8400".to_owned()));
        for (bad, why) in [
            ("http://a:1", "unsupported scheme"),
            ("a:1,b:2", "proglog://"),
            ("a", "expected host:port"),
            ("::1:8400", "brackets"),
            ("a:0", "not a port"),
            ("proglog://", "expected host:port"),
            (":80", "host is empty"),
        ] {
            let error = Target::parse(bad).expect_err(bad);
            assert!(error.contains(why), "{bad}: {error}");
        }
    }
}
