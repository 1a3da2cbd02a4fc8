//! The `Membership` trait over the Redis scripts and lists of `mod.rs`: one script per
//! change, time from `TIME`, the member list on a connection of its own.

use super::*;

#[async_trait::async_trait]
impl Membership for RedisMembership {
    fn kind(&self) -> BackendKind {
        BackendKind::Redis
    }

    async fn backend_now_ms(&self) -> Result<u64, ClusterError> {
        self.server_now_ms().await
    }

    async fn admin_only(&self, what: &str) -> Result<(), ClusterError> {
        RedisMembership::admin_only(self, what)
    }

    fn users(&self) -> Option<&dyn crate::cluster::BackendUsers> {
        Some(self)
    }

    async fn register(&self, node: &NodeRecord) -> Result<usize, ClusterError> {
        if let Role::Node(name) = &self.role {
            return self.own_register(name, node).await;
        }
        let mut args = self.base_args();
        args.push(self.timeout_ms().to_string());
        args.push(node.id.clone());
        args.push(node.name.clone());
        args.push(ips_of(node).join(","));
        for (k, v) in node.to_fields() {
            args.push(k.to_string());
            args.push(v);
        }
        let reply: (String, String) = self.run(&REGISTER_SCRIPT, &args).await?;
        match reply.0.as_str() {
            "name_taken" => Err(ClusterError::NameTaken {
                name: node.name.clone(),
                holder: reply.1,
            }),
            "removed" => Err(ClusterError::Removed(node.id.clone())),
            _ => match parse_outcome(reply, &node.id)? {
                Heartbeat::Alive { active } => Ok(active),
                _ => Err(ClusterError::Backend {
                    backend: NAME,
                    reason: "registration not recorded".into(),
                }),
            },
        }
    }

    async fn heartbeat(&self, node: &NodeRecord) -> Result<Heartbeat, ClusterError> {
        self.check_users_after_move().await;
        if let Role::Node(name) = &self.role {
            return self.own_heartbeat(name, node).await;
        }
        self.check_revocations().await;
        self.adopt_turn().await;
        let mut args = self.base_args();
        args.push(self.timeout_ms().to_string());
        args.push(node.id.clone());
        args.push(PRUNE_LIMIT.to_string());
        let reply: (String, String) = self.run(&HEARTBEAT_SCRIPT, &args).await?;
        parse_outcome(reply, &node.id)
    }

    async fn deregister(&self, node_id: &str) -> Result<(), ClusterError> {
        let leave = async {
            if let Role::Node(name) = &self.role {
                return self.own_deregister(name, node_id).await;
            }
            let mut args = self.base_args();
            args.extend([node_id.into(), "left".into(), "0".into(), String::new()]);
            let _: i64 = self.run(&LEAVE_SCRIPT, &args).await?;
            Ok(())
        };
        crate::cluster::within(NAME, "leaving", crate::cluster::LEAVE_DEADLINE, leave).await
    }

    async fn remove(&self, node_id: &str, by: &str) -> Result<bool, ClusterError> {
        self.admin_only(&format!("remove {node_id}"))?;
        if roles::name_of_id(node_id).is_some() {
            // A node on its own user that joined within the last interval is listed from its
            // own record but not indexed yet (`roles.rs`): index it first (before the
            // revocation's tombstone, which indexing skips).
            let mut score = redis::cmd("ZSCORE");
            score.arg(self.key("members")).arg(node_id);
            let (indexed,): (Option<f64>,) = self.query(redis::pipe().add_command(score)).await?;
            if indexed.is_none() {
                self.adopt().await?;
            }
        }
        // The user goes with the node: the one the primary registered for the name the id
        // carries (never a name a record claims), and only while that name is still the
        // node's own (a newer node that took the name since has the user now).
        let user = match roles::name_of_id(node_id) {
            Some(n) => {
                let mut holder = redis::cmd("HGET");
                holder.arg(self.key("names")).arg(n);
                let (holder,): (Option<String>,) =
                    self.query(redis::pipe().add_command(holder)).await?;
                match holder {
                    Some(h) if h != node_id => {
                        log::info!(
                            "node {node_id} removed; its name {n} is held by {h} now, whose Redis user stays"
                        );
                        None
                    }
                    _ => {
                        let user = self.user_name("node", n);
                        let mut cmd = redis::cmd("HEXISTS");
                        cmd.arg(self.key("node-users")).arg(&user);
                        let registered = matches!(
                            self.query::<(bool,)>(redis::pipe().add_command(cmd)).await,
                            Ok((true,))
                        );
                        registered.then_some(user)
                    }
                }
            }
            None => None,
        };
        // Revoked first: once removed, the node's user is never re-created (`users.rs`), even
        // if this node may not delete it and the server loses the user before one that may.
        if let Some(user) = &user {
            self.revoke_user(user, node_id, if by.is_empty() { "admin" } else { by })
                .await?;
        }
        let removed = self.remove_member(node_id, by).await?;
        // Its own ACL user goes with it, so its credentials stop working at once (Redis also
        // closes that user's connections). A node without one (shared credentials) is fine.
        if let Some(user) = user {
            match self.delete_user(&user).await {
                Ok(()) => {}
                // This node may not manage users: one that may deletes it before its next
                // heartbeat.
                Err(ClusterError::Auth { .. }) => log::info!(
                    "node {node_id} removed; its Redis user {user} is deleted by a node that may manage users"
                ),
                Err(e) => {
                    log::warn!("node {node_id} removed, but its Redis user {user} may remain: {e}")
                }
            }
        }
        Ok(removed)
    }

    async fn housekeeping(&self) -> Result<(), ClusterError> {
        if self.role != Role::Admin {
            return Ok(());
        }
        if let Err(e) = self.reassert_removals().await {
            log::warn!("could not check this node's removals on the Redis server: {e}");
        }
        if let Err(e) = self.restore_users().await {
            log::warn!("could not check the node users on the Redis server: {e}");
        }
        if let Err(e) = self.backfill_indexes().await {
            log::debug!("index backfill: {e}");
        }
        match self.expire_enroll_users().await {
            // This node may not manage users: a node that may will do it.
            Err(ClusterError::Auth { .. }) | Err(ClusterError::Backend { .. }) => Ok(()),
            other => other,
        }
    }

    fn supports_enrollment(&self) -> bool {
        true
    }

    async fn put_enrollment(&self, record: &EnrollmentRecord) -> Result<(), ClusterError> {
        self.admin_only("build node packages")?;
        // Strings and numbers only: serialising cannot fail.
        let json = serde_json::to_string(record).unwrap_or_default();
        // The record's expiry is on Redis's clock (the build read it with `backend_now_ms`), so
        // Redis ends it at that instant, whatever this machine's clock says.
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(&format!("enroll:{}", record.token_id)))
            .arg(json)
            .arg("PXAT")
            .arg(record.expires_ms.max(1));
        self.query::<()>(redis::pipe().add_command(cmd).ignore())
            .await
    }

    async fn take_enrollment(
        &self,
        token_id: &str,
    ) -> Result<Option<EnrollmentRecord>, ClusterError> {
        let mut cmd = redis::cmd("GETDEL");
        cmd.arg(self.key(&format!("enroll:{token_id}")));
        let (v,): (Option<String>,) = self.query(redis::pipe().add_command(cmd)).await?;
        Ok(v.and_then(|s| serde_json::from_str(&s).ok()))
    }

    async fn list_enrollments(&self) -> Result<Vec<EnrollmentRecord>, ClusterError> {
        self.admin_only("list pending packages")?;
        let pattern = self.key("enroll:*");
        let mut keys: Vec<String> = Vec::new();
        let mut cursor = 0u64;
        // SCAN in bounded steps: pending enrollments are few.
        for _ in 0..1000 {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500);
            let ((next, batch),): ((u64, Vec<String>),) =
                self.query(redis::pipe().add_command(cmd)).await?;
            keys.extend(batch);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for k in &keys {
            pipe.get(k);
        }
        let values: Vec<Option<String>> = self.query(&pipe).await?;
        let mut out: Vec<EnrollmentRecord> = values
            .into_iter()
            .flatten()
            .filter_map(|v| serde_json::from_str(&v).ok())
            .collect();
        out.sort_by_key(|r| r.created_ms);
        Ok(out)
    }

    async fn revoke_enrollment(
        &self,
        token_id: &str,
    ) -> Result<Option<EnrollmentRecord>, ClusterError> {
        self.admin_only("revoke packages")?;
        let taken = self.take_enrollment(token_id).await?;
        if let Some(rec) = &taken {
            // The enrollment user stays a short while (housekeeping deletes it then): it can
            // only leave a refusal note, and with it the revoked package's node records its
            // rejection. The node user goes, unless a pending
            // package or a member still uses it: a later build for the same name shares it
            // (and reset its password), so it may be the one a live node runs with. Only the
            // node user of the record's own name, which the primary wrote.
            let own_user = self.user_name("node", &rec.node_name);
            let in_use = self.node_users_in_use().await;
            for user in rec.users.iter().filter(|u| **u == own_user) {
                match &in_use {
                    Ok(used) if used.contains(user) => {
                        log::info!("package revoked; its Redis user {user} stays (in use)");
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        log::warn!("package revoked; its Redis user {user} stays: {e}");
                        continue;
                    }
                }
                if let Err(e) = self.delete_user(user).await {
                    log::warn!("package revoked, but its Redis user {user} remains: {e}");
                }
            }
        }
        Ok(taken)
    }

    async fn members(&self) -> Result<Vec<Member>, ClusterError> {
        // The clock first: liveness is judged at this instant, as from a snapshot taken now (a
        // heartbeat that lands while the list runs only makes a member younger).
        let ((secs, micros),): ((u64, u64),) = self.query_list(redis::pipe().cmd("TIME")).await?;
        let now = secs * 1000 + micros / 1000;
        // Nodes with a user of their own are listed from their own records (at once, without
        // waiting for the primary's index), the others from the index.
        let roster = self.roster().await?;
        let own: std::collections::HashSet<&str> = roster.iter().map(String::as_str).collect();
        let rows = self.scan_member_rows(&own).await?;
        let timeout = self.timeout_ms();
        let large = rows.len() >= OFFLOAD_AT;
        let mut own_members = self.own_members(&roster, now).await?;
        // Decoding the records, building and sorting the members is this process's CPU share
        // of a list: a large list does it on a blocking thread, which the OS preempts, not on
        // the async workers that also answer status reads and heartbeats.
        let build = move || {
            let mut out: Vec<Member> = rows
                .into_iter()
                .map(|(id, score, row)| member_of_row(id, score, row_of_value(row), now, timeout))
                .collect();
            out.append(&mut own_members);
            out.sort_by(|a, b| {
                a.node
                    .name
                    .cmp(&b.node.name)
                    .then(a.node.id.cmp(&b.node.id))
            });
            out
        };
        if !large {
            return Ok(build());
        }
        tokio::task::spawn_blocking(build)
            .await
            .map_err(|e| ClusterError::Backend {
                backend: NAME,
                reason: format!("building the member list: {e}"),
            })
    }

    async fn members_page(
        &self,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<(Vec<Member>, Option<String>), ClusterError> {
        // Two sorted sources merged: the index (`order`, written by the primary) for nodes on
        // shared credentials, and the roster's own records for nodes with users of their own
        // (listed at once, before the primary indexes them). Each read is bounded; the page
        // stops where the first truncated source stops, so no member falls between pages.
        let after = cursor.and_then(crate::cluster::parse_cursor);
        let start: Vec<u8> = match &after {
            Some((name, id)) => [b"(".as_slice(), &order_entry(name, id)].concat(),
            None => b"-".to_vec(),
        };
        let roster_start: Vec<u8> = match &after {
            Some((name, _)) => [b"[".as_slice(), name.as_bytes()].concat(),
            None => b"-".to_vec(),
        };
        let window = limit.saturating_add(1);
        let mut pipe = redis::pipe();
        pipe.cmd("ZRANGEBYLEX")
            .arg(self.key("order"))
            .arg(start)
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(window);
        pipe.cmd("TIME");
        pipe.cmd("ZRANGEBYLEX")
            .arg(self.key("roster"))
            .arg(roster_start)
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(window);
        let (entries, (secs, micros), names): (Vec<Vec<u8>>, (u64, u64), Vec<String>) =
            self.query_list(&pipe).await?;
        let now = secs * 1000 + micros / 1000;
        let parsed: Vec<(String, String)> = entries
            .iter()
            .filter_map(|e| crate::cluster::parse_cursor(&hex::encode(e)))
            .collect();
        // Everything up to `bound` (inclusive) has been seen in both sources.
        let mut bound: Option<(String, String)> = None;
        if entries.len() >= window
            && let Some(last) = parsed.last()
        {
            bound = Some(last.clone());
        }
        if names.len() >= window
            && let Some(last) = names.last()
        {
            let b = (last.clone(), "\u{7f}".to_string());
            bound = Some(match bound {
                Some(a) if a < b => a,
                _ => b,
            });
        }
        let rostered: std::collections::BTreeSet<&str> = names.iter().map(String::as_str).collect();
        let index_ids: Vec<String> = parsed
            .iter()
            .filter(|(name, _)| !rostered.contains(name.as_str()))
            .map(|(_, id)| id.clone())
            .collect();
        let mut out = Vec::new();
        if !index_ids.is_empty() {
            let mut pipe = redis::pipe();
            for id in &index_ids {
                pipe.zscore(self.key("members"), id);
            }
            let scores: Vec<Option<f64>> = self.query_list(&pipe).await?;
            out.extend(
                self.rows_to_members(index_ids.into_iter().zip(scores).collect(), now)
                    .await?,
            );
        }
        out.extend(self.own_members(&names, now).await?);
        let key = |m: &Member| (m.node.name.clone(), m.node.id.clone());
        out.retain(|m| {
            let k = key(m);
            after.as_ref().is_none_or(|a| k > *a) && bound.as_ref().is_none_or(|b| k <= *b)
        });
        out.sort_by_key(key);
        let more = bound.is_some() || out.len() > limit;
        out.truncate(limit);
        let next = if more {
            match (out.last(), &bound) {
                (Some(m), _) => Some(crate::cluster::cursor_of(&m.node)),
                (None, Some((n, i))) => Some(hex::encode(order_entry(n, i))),
                (None, None) => None,
            }
        } else {
            None
        };
        Ok((out, next))
    }

    async fn live_holders(
        &self,
        name: Option<&str>,
        ips: &[std::net::IpAddr],
    ) -> Result<crate::cluster::Holders, ClusterError> {
        let mut pipe = redis::pipe();
        pipe.hget(self.key("names"), name.unwrap_or(""));
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.key("ips")).arg("");
        for ip in ips {
            cmd.arg(ip.to_string());
        }
        pipe.add_command(cmd);
        pipe.cmd("TIME");
        pipe.zscore(self.key("roster"), name.unwrap_or(""));
        let (name_holder, ip_holders, (secs, micros), rostered): (
            Option<String>,
            Vec<Option<String>>,
            (u64, u64),
            Option<f64>,
        ) = self.query_list(&pipe).await?;
        // A name on the roster is held by its own record alone (the index may be behind).
        let name_holder = name_holder.filter(|_| rostered.is_none());
        let now = secs * 1000 + micros / 1000;
        // The first entry of HMGET is the "" placeholder (HMGET needs one field at least).
        let ip_holders: Vec<(std::net::IpAddr, String)> = ips
            .iter()
            .zip(ip_holders.into_iter().skip(1))
            .filter_map(|(ip, h)| Some((*ip, h?)))
            .collect();
        let candidates: Vec<String> = name_holder
            .iter()
            .filter(|_| name.is_some())
            .cloned()
            .chain(ip_holders.iter().map(|(_, h)| h.clone()))
            .collect();
        if candidates.is_empty() && name.is_none() {
            return Ok(crate::cluster::Holders::default());
        }
        let mut pipe = redis::pipe();
        for id in &candidates {
            pipe.zscore(self.key("members"), id);
        }
        let scores: Vec<Option<f64>> = if candidates.is_empty() {
            Vec::new()
        } else {
            self.query_list(&pipe).await?
        };
        // Live by their score, and only with a record that passes validation: an index entry
        // is not trusted to hold a name or an address for a record that fails it.
        let scored: Vec<(String, Option<f64>)> = candidates.iter().cloned().zip(scores).collect();
        let live: std::collections::BTreeSet<String> = self
            .rows_to_members(scored, now)
            .await?
            .into_iter()
            .filter(|m| m.state == MemberState::Active && m.node.validate().is_ok())
            .map(|m| m.node.id)
            .collect();
        // A node with a user of its own holds its name by its own record, at once.
        let own_holder = match name {
            Some(n) => self
                .own_member_of(n, now)
                .await?
                .filter(|m| m.state == MemberState::Active && m.node.validate().is_ok())
                .map(|m| m.node.id),
            None => None,
        };
        Ok(crate::cluster::Holders {
            name: own_holder.or(name_holder.filter(|h| name.is_some() && live.contains(h))),
            ip: ip_holders.into_iter().find(|(_, h)| live.contains(h)),
        })
    }

    async fn active_count(&self) -> Result<usize, ClusterError> {
        let args = [self.prefix.clone(), self.timeout_ms().to_string()];
        let (_, active): (String, String) = self.run(&ACTIVE_SCRIPT, &args).await?;
        Ok(active.parse().unwrap_or(0))
    }

    async fn prune(&self) -> Result<Vec<String>, ClusterError> {
        let mut args = self.base_args();
        args.push(self.timeout_ms().to_string());
        args.push(PRUNE_LIMIT.to_string());
        self.run(&PRUNE_SCRIPT, &args).await
    }

    async fn record_event(&self, event: &Event) -> Result<(), ClusterError> {
        // Nodes and enrollment users leave a note of their own that the primary records; the
        // primary's own events are a plain XADD (the entry's id carries the server's time,
        // which `events` reads as `at_ms`).
        match &self.role {
            Role::Node(name) => self.own_event(name, event).await,
            Role::Enroll(token) => self.enroll_event(token, event).await,
            Role::Admin => self.admin_event(event).await,
        }
    }

    async fn events(&self, limit: usize) -> Result<Vec<Event>, ClusterError> {
        let mut pipe = redis::pipe();
        pipe.cmd("XREVRANGE")
            .arg(self.key("events"))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(limit);
        let (entries,): (Vec<(String, BTreeMap<String, String>)>,) = self.query(&pipe).await?;
        Ok(entries
            .into_iter()
            .filter_map(|(id, fields)| {
                let mut detail = fields;
                let kind = EventKind::parse(&detail.remove("kind")?)?;
                let node_id = detail.remove("node_id").unwrap_or_default();
                // Scripts write `at_ms`; a plain XADD leaves it to the id (`<ms>-<seq>`).
                let at_ms = detail
                    .remove("at_ms")
                    .or_else(|| id.split('-').next().map(str::to_string))
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                Some(Event::new(kind, node_id).at(at_ms).with_detail(detail))
            })
            .collect())
    }
}
