//! DNS-01 answers published through RFC 2136 dynamic updates signed with
//! TSIG (RFC 8945), the provider-neutral way (lego's `rfc2136`): the
//! operator's primary server takes `_acme-challenge.<name> TXT <digest>`,
//! the gateway waits until that server answers it, the CA validates, and
//! the record is deleted again.
//!
//! - The zone is `[tls.acme.dns01] zone`, or the closest enclosing zone the
//!   server holds a SOA for (asked name by name, upwards).
//! - A custom wildcard domain's `_acme-challenge` name is a CNAME into a
//!   zone of the operator's server (delegation, as acme-dns and Fly do):
//!   the record is written at the CNAME's target.
//! - Updates go over TCP, each answer's TSIG is verified, and every
//!   exchange is bounded by `timeout_ms`.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime};

use hickory_proto::dnssec::rdata::tsig::TsigAlgorithm as Mac;
use hickory_proto::dnssec::tsig::TSigner;
use hickory_proto::op::{update_message, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{Name, RData, Record, RecordSet, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::dns01::{Dns01, TsigAlgorithm};

/// How long a TSIG-signed message may be off the server's clock.
const FUDGE: u16 = 300;
/// How often the server is asked whether the record is visible.
const POLL: Duration = Duration::from_millis(250);
/// CNAME hops followed from `_acme-challenge.<name>`.
const MAX_CNAME_HOPS: usize = 8;

/// Why publishing a DNS-01 answer failed.
#[derive(Debug, thiserror::Error)]
pub enum Dns01Error {
    #[error("DNS server {server}: {reason}")]
    Transport { server: SocketAddr, reason: String },
    #[error(
        "DNS server {server} answered {rcode} to the update of {name} (check the TSIG key and the zone's update ACL)"
    )]
    Refused {
        server: SocketAddr,
        name: String,
        rcode: String,
    },
    #[error("DNS server {server} holds no zone for {name} (no SOA at or above it); set [tls.acme.dns01] zone, or delegate _acme-challenge by CNAME into a zone it holds")]
    NoZone { server: SocketAddr, name: String },
    #[error("the answer from DNS server {server} failed TSIG verification: {reason}")]
    Tsig { server: SocketAddr, reason: String },
    #[error("{name} TXT was not visible at DNS server {server} after {secs} s")]
    NotVisible {
        server: SocketAddr,
        name: String,
        secs: u64,
    },
    #[error("{0} is not a valid DNS name")]
    Name(String),
    #[error("TSIG key: {0}")]
    Key(String),
}

/// A TXT record published for one challenge, to delete afterwards.
#[derive(Debug, Clone)]
pub struct Published {
    record: Name,
    zone: Name,
    value: String,
}

impl Published {
    /// The name the TXT record was written at.
    pub fn record(&self) -> String {
        self.record.to_ascii()
    }
}

/// Publishes and withdraws DNS-01 TXT records at one server.
pub struct Rfc2136 {
    cfg: Dns01,
    signer: TSigner,
}

impl std::fmt::Debug for Rfc2136 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rfc2136")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn name(text: &str) -> Result<Name, Dns01Error> {
    let mut n = Name::from_str(text).map_err(|_| Dns01Error::Name(text.to_string()))?;
    n.set_fqdn(true);
    Ok(n)
}

fn now_u32() -> u32 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32)
}

impl Rfc2136 {
    pub fn new(cfg: &Dns01) -> Result<Rfc2136, Dns01Error> {
        let mac = match cfg.tsig_algorithm {
            TsigAlgorithm::HmacSha256 => Mac::HmacSha256,
            TsigAlgorithm::HmacSha384 => Mac::HmacSha384,
            TsigAlgorithm::HmacSha512 => Mac::HmacSha512,
        };
        let signer = TSigner::new(cfg.tsig_secret.clone(), mac, name(&cfg.tsig_key)?, FUDGE)
            .map_err(|e| Dns01Error::Key(e.to_string()))?;
        Ok(Rfc2136 {
            cfg: cfg.clone(),
            signer,
        })
    }

    /// Writes `value` as a TXT record at `_acme-challenge.<domain>` (or
    /// where its CNAME points), next to any other values there, and waits
    /// until the server answers it.
    pub async fn publish(&self, domain: &str, value: &str) -> Result<Published, Dns01Error> {
        let record = self.follow_cname(&format!("_acme-challenge.{domain}")).await?;
        let zone = self.zone_of(&record).await?;
        let txt = Record::from_rdata(
            record.clone(),
            self.cfg.ttl,
            RData::TXT(TXT::new(vec![value.to_string()])),
        );
        let mut set = RecordSet::new(record.clone(), RecordType::TXT, 0);
        set.insert(txt, 0);
        self.update(update_message::append(set, zone.clone(), false, false), &record)
            .await?;
        let published = Published {
            record,
            zone,
            value: value.to_string(),
        };
        self.wait_visible(&published).await?;
        Ok(published)
    }

    /// Deletes a record written by [`Rfc2136::publish`] (that value only).
    pub async fn withdraw(&self, p: &Published) -> Result<(), Dns01Error> {
        let txt = Record::from_rdata(p.record.clone(), 0, RData::TXT(TXT::new(vec![p.value.clone()])));
        let mut set = RecordSet::new(p.record.clone(), RecordType::TXT, 0);
        set.insert(txt, 0);
        self.update(update_message::delete_by_rdata(set, p.zone.clone(), false), &p.record)
            .await
    }

    /// Sends one signed update and checks the answer: its code, then its
    /// TSIG.
    async fn update(&self, mut msg: Message, record: &Name) -> Result<(), Dns01Error> {
        let server = self.cfg.server;
        let mut verify = msg
            .finalize(&self.signer, now_u32())
            .map_err(|e| Dns01Error::Key(e.to_string()))?;
        let (answer, parsed) = self.exchange_parsed(&msg).await?;
        if parsed.response_code() != ResponseCode::NoError {
            return Err(Dns01Error::Refused {
                server,
                name: record.to_ascii(),
                rcode: parsed.response_code().to_string(),
            });
        }
        if let Some(verify) = verify.as_mut() {
            verify(&answer).map_err(|e| Dns01Error::Tsig {
                server,
                reason: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// One query to the server, unsigned, without recursion.
    async fn query(&self, qname: &Name, rtype: RecordType) -> Result<Message, Dns01Error> {
        let mut msg = Message::new();
        msg.set_id(random_id())
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(false)
            .add_query(Query::query(qname.clone(), rtype));
        Ok(self.exchange_parsed(&msg).await?.1)
    }

    /// [`Rfc2136::exchange`], with the answer parsed and checked to answer
    /// `msg` (same id).
    async fn exchange_parsed(&self, msg: &Message) -> Result<(Vec<u8>, Message), Dns01Error> {
        let server = self.cfg.server;
        let answer = self.exchange(msg).await?;
        let parsed = Message::from_vec(&answer).map_err(|e| Dns01Error::Transport {
            server,
            reason: format!("unreadable answer: {e}"),
        })?;
        if parsed.id() != msg.id() {
            return Err(Dns01Error::Transport {
                server,
                reason: "answer to another message".into(),
            });
        }
        Ok((answer, parsed))
    }

    /// Sends `msg` over TCP (two-byte length, RFC 1035 §4.2.2) and reads
    /// one answer, all within the timeout.
    async fn exchange(&self, msg: &Message) -> Result<Vec<u8>, Dns01Error> {
        let server = self.cfg.server;
        let fail = |reason: String| Dns01Error::Transport { server, reason };
        let bytes = msg.to_vec().map_err(|e| fail(format!("message not encodable: {e}")))?;
        let len = u16::try_from(bytes.len()).map_err(|_| fail("message too long".into()))?;
        let run = async {
            let mut s = TcpStream::connect(server).await?;
            let mut out = Vec::with_capacity(bytes.len() + 2);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&bytes);
            s.write_all(&out).await?;
            let n = s.read_u16().await? as usize;
            let mut answer = vec![0; n];
            s.read_exact(&mut answer).await?;
            Ok::<_, std::io::Error>(answer)
        };
        match tokio::time::timeout(self.cfg.timeout, run).await {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(e)) => Err(fail(e.to_string())),
            Err(_) => Err(fail(format!("no answer in {} ms", self.cfg.timeout.as_millis()))),
        }
    }

    /// Where `_acme-challenge.<name>` really is: its CNAME chain's end, as
    /// the server answers it.
    async fn follow_cname(&self, start: &str) -> Result<Name, Dns01Error> {
        let mut at = name(start)?;
        for _ in 0..MAX_CNAME_HOPS {
            let answer = match self.query(&at, RecordType::CNAME).await {
                Ok(a) => a,
                // A server that does not hold the name's zone: the name is
                // not delegated to it; the SOA search reports that.
                Err(_) => return Ok(at),
            };
            let target = answer.answers().iter().find_map(|r| match r.data() {
                RData::CNAME(c) if r.name() == &at => Some(c.0.clone()),
                _ => None,
            });
            match target {
                Some(t) => at = t,
                None => return Ok(at),
            }
        }
        Ok(at)
    }

    /// The zone to update for `record`: the configured one when it
    /// encloses the record, else the closest name with a SOA at the
    /// server.
    async fn zone_of(&self, record: &Name) -> Result<Name, Dns01Error> {
        if let Some(z) = &self.cfg.zone {
            let z = name(z)?;
            if z.zone_of(record) {
                return Ok(z);
            }
        }
        let mut at = record.clone();
        loop {
            if let Ok(answer) = self.query(&at, RecordType::SOA).await {
                if answer.response_code() == ResponseCode::NoError
                    && answer
                        .answers()
                        .iter()
                        .any(|r| r.record_type() == RecordType::SOA && r.name() == &at)
                {
                    return Ok(at);
                }
            }
            if at.num_labels() <= 1 {
                return Err(Dns01Error::NoZone {
                    server: self.cfg.server,
                    name: record.to_ascii(),
                });
            }
            at = at.base_name();
        }
    }

    /// Waits until the server answers the published value.
    async fn wait_visible(&self, p: &Published) -> Result<(), Dns01Error> {
        let deadline = Instant::now() + self.cfg.propagation_timeout;
        loop {
            if let Ok(answer) = self.query(&p.record, RecordType::TXT).await {
                let seen = answer.answers().iter().any(|r| match r.data() {
                    RData::TXT(t) => t.txt_data().iter().any(|d| d.as_ref() == p.value.as_bytes()),
                    _ => false,
                });
                if seen {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(Dns01Error::NotVisible {
                    server: self.cfg.server,
                    name: p.record.to_ascii(),
                    secs: self.cfg.propagation_timeout.as_secs(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// A random message id (RFC 5452: unpredictable ids).
fn random_id() -> u16 {
    let mut b = [0u8; 2];
    if getrandom::fill(&mut b).is_err() {
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        return (t ^ (t >> 16)) as u16;
    }
    u16::from_be_bytes(b)
}
