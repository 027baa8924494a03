//! `/status` JSON and `/metrics` text from the cores' snapshots.

use std::collections::HashMap;
use std::fmt::Write;
use std::net::SocketAddr;

use serde_json::json;

use super::BladeInfo;
use crate::cluster::hosting::Ending;
use crate::proxy::metrics::{REFUSALS, RTT_BUCKETS};
use crate::proxy::{Metrics, Snapshot};

/// The `/status` document of SPEC §6.
///
/// An agent of another blade that a session here hosts is logged out
/// here (it registered there), but this blade holds its login information
/// and drives its call (SPEC §2 step 4): it shows `in_call`, at the
/// contact its blade gave with the grant.
pub fn status_json(info: &BladeInfo, snapshots: &[Snapshot]) -> String {
    let mut agents: Vec<_> = snapshots.iter().flat_map(|s| s.agents.iter()).collect();
    agents.sort_by(|a, b| a.extension.cmp(&b.extension));
    // Sessions and agent records may live on different cores.
    let hosted: HashMap<&str, SocketAddr> = snapshots
        .iter()
        .flat_map(|s| s.hosted.iter())
        .map(|h| (h.extension.as_str(), h.contact))
        .collect();
    let agents: Vec<_> = agents
        .iter()
        .map(|a| {
            let here = hosted
                .get(a.extension.as_str())
                .filter(|_| a.contact.is_none());
            let (state, contact) = match here {
                Some(&contact) => ("in_call", Some(contact)),
                None => (a.state, a.contact),
            };
            json!({
                "badge": a.badge,
                "extension": a.extension,
                "kind": a.kind,
                "state": state,
                "hosted_by": a.hosted_by,
                "contact": contact.map(|c| c.to_string()),
            })
        })
        .collect();
    let mut sessions: Vec<_> = snapshots.iter().flat_map(|s| s.sessions.iter()).collect();
    sessions.sort_by(|a, b| a.call_id.cmp(&b.call_id));
    let sessions: Vec<_> = sessions
        .iter()
        .map(|s| json!({"call_id": s.call_id, "agents": s.agents, "hosted": s.hosted}))
        .collect();
    let peers: Vec<_> = info
        .peers
        .states()
        .into_iter()
        .map(|(id, up)| json!({"id": id, "up": up}))
        .collect();
    let doc = json!({"blade": info.id, "agents": agents, "sessions": sessions, "peers": peers});
    format!("{doc}\n")
}

/// The `/metrics` text (Prometheus exposition format 0.0.4);
/// `link_datagrams` are the QUIC datagrams the link sent and received.
pub fn metrics_text(snapshots: &[Snapshot], link_datagrams: (u64, u64)) -> String {
    let mut m = Metrics::default();
    for s in snapshots {
        m.merge(&s.metrics);
    }
    let transactions: usize = snapshots.iter().map(|s| s.transactions).sum();
    let sessions: usize = snapshots.iter().map(|s| s.sessions.len()).sum();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP sipblade_calls_total Calls by outcome and route (cross-blade calls count on the source blade)."
    );
    let _ = writeln!(out, "# TYPE sipblade_calls_total counter");
    for (route, c) in [("local", &m.local), ("cross_blade", &m.cross_blade)] {
        for (outcome, n) in [
            ("answered", c.answered),
            ("busy", c.busy),
            ("cancelled", c.cancelled),
            ("failed", c.failed),
        ] {
            let _ = writeln!(
                out,
                "sipblade_calls_total{{outcome=\"{outcome}\",route=\"{route}\"}} {n}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP sipblade_hosting_refused_total Hostings refused, by reason (already_hosted also counts calls refused for an agent this blade hosts, without asking)."
    );
    let _ = writeln!(out, "# TYPE sipblade_hosting_refused_total counter");
    for (reason, n) in REFUSALS.iter().zip(m.hosting_refused.iter()) {
        let _ = writeln!(
            out,
            "sipblade_hosting_refused_total{{reason=\"{}\"}} {n}",
            reason.as_str().replace(' ', "_")
        );
    }
    let name = "sipblade_hosting_released_total";
    let _ = writeln!(
        out,
        "# HELP {name} Hostings this blade granted that ended, by how: unhost (the source ended it), lapsed (its lease ran out), peer_restarted (the source blade came back as a new run, or stopped), peer_disowned (the source, asked after its link came back, no longer held it).\n# TYPE {name} counter"
    );
    for (how, n) in Ending::ALL.iter().zip(m.hosting_released.iter()) {
        let _ = writeln!(out, "{name}{{reason=\"{}\"}} {n}", how.as_str());
    }
    let name = "sipblade_hosting_rtt_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Host request to grant, on the source blade.\n# TYPE {name} histogram"
    );
    let mut cumulative = 0;
    for (bound, n) in RTT_BUCKETS.iter().zip(m.hosting_rtt.buckets.iter()) {
        cumulative += n;
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    let h = &m.hosting_rtt;
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", h.sum, h.count);
    let name = "sipblade_link_datagrams_total";
    let _ = writeln!(
        out,
        "# HELP {name} QUIC datagrams of the inter-blade link.\n# TYPE {name} counter"
    );
    let (sent, received) = link_datagrams;
    let _ = writeln!(out, "{name}{{direction=\"sent\"}} {sent}");
    let _ = writeln!(out, "{name}{{direction=\"received\"}} {received}");
    for (name, kind, help, value) in [
        (
            "sipblade_registrations_total",
            "counter",
            "REGISTERs accepted.",
            m.registrations as usize,
        ),
        (
            "sipblade_messages_malformed_total",
            "counter",
            "Messages refused or dropped as malformed.",
            m.malformed as usize,
        ),
        (
            "sipblade_overload_rejected_total",
            "counter",
            "Requests answered 503 under overload.",
            m.overloaded as usize,
        ),
        (
            "sipblade_tcp_connections_refused_total",
            "counter",
            "TCP connections closed as soon as accepted: the blade held max_tcp_connections.",
            m.tcp_refused as usize,
        ),
        (
            "sipblade_tcp_connections_timed_out_total",
            "counter",
            "TCP connections closed for sending no complete message in time, or stalling within one.",
            m.tcp_timed_out as usize,
        ),
        (
            "sipblade_core_handoffs_total",
            "counter",
            "Messages a core received for another core and handed over (each wakes that core).",
            m.handoffs as usize,
        ),
        (
            "sipblade_hosting_granted_total",
            "counter",
            "Agents this blade handed over to a hosting blade.",
            m.hosting_granted as usize,
        ),
        (
            "sipblade_joins_total",
            "counter",
            "Join legs answered: agents let into a live session (conference, monitoring).",
            m.joins as usize,
        ),
        (
            "sipblade_replaces_total",
            "counter",
            "Calls answered that replaced another (Replaces: attended transfer, pickup).",
            m.replaces as usize,
        ),
        (
            "sipblade_sessions_expired_total",
            "counter",
            "Sessions ended after max_call_secs without a BYE.",
            m.sessions_expired as usize,
        ),
        (
            "sipblade_sessions_unacked_total",
            "counter",
            "Sessions ended 64xT1 after a 2xx the callee sent again and no ACK followed.",
            m.sessions_unacked as usize,
        ),
        (
            "sipblade_sessions_bye_sent_total",
            "counter",
            "BYEs the blade sent itself to the phones of a call it ended (max_call_secs, a lost peer blade, a hosting lease lapsed or its source restarted).",
            m.sessions_bye_sent as usize,
        ),
        (
            "sipblade_sessions_bye_failed_total",
            "counter",
            "Of the blade's own BYEs, those no 2xx answered (refused, timed out, or not sent).",
            m.sessions_bye_failed as usize,
        ),
        (
            "sipblade_transactions_active",
            "gauge",
            "Live SIP transactions.",
            transactions,
        ),
        (
            "sipblade_sessions_active",
            "gauge",
            "Live sessions.",
            sessions,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    out
}
