//! etcd membership: register, heartbeat, prune, leave and list, each one transaction, and the
//! `Membership` trait over them.

use super::*;

impl EtcdMembership {
    pub(super) async fn register_inner(
        &self,
        mut client: Client,
        node: &NodeRecord,
    ) -> Result<usize, ClusterError> {
        let id = node.id.as_str();
        if let Some(own) = self.own_name()
            && (node.name != own || keys::name_of_id(id) != Some(own))
        {
            return Err(ClusterError::Auth {
                backend: NAME,
                reason: format!(
                    "this node's etcd user is for the node named {own}, not {}: build its package with --node-name {}",
                    node.name, node.name
                ),
            });
        }
        let (k_removed, k_name, k_alive, k_member) = (
            self.key(&format!("removed/{id}")),
            self.key(&format!("names/{}", node.name)),
            self.id_key("alive", id),
            self.id_key("members", id),
        );
        // An earlier release's keys of this id (its process before an upgrade): read, and
        // deleted here when this credential may (the primary's); else the prune takes them.
        let legacy = [self.legacy_key("alive", id), self.legacy_key("members", id)];
        let mut granted: Option<i64> = None;
        for _ in 0..TXN_ATTEMPTS {
            let mut reads = vec![
                TxnOp::get(k_removed.clone(), None),
                TxnOp::get(k_name.clone(), None),
                TxnOp::get(k_alive.clone(), None),
                TxnOp::get(k_member.clone(), None),
                TxnOp::get(self.key("active"), None),
            ];
            reads.extend(legacy.iter().flatten().map(|k| TxnOp::get(k.clone(), None)));
            let read = client
                .txn(Txn::new().and_then(reads))
                .await
                .map_err(|e| map_err(&e))?;
            let (legacy_alive, legacy_member) = match legacy {
                [Some(_), Some(_)] => (
                    kvs_of(&read, 5).into_iter().next(),
                    kvs_of(&read, 6).into_iter().next(),
                ),
                _ => (None, None),
            };
            if !kvs_of(&read, 0).is_empty() {
                if let Some(l) = granted {
                    let _ = Self::revoke(&mut client, l).await;
                }
                return Err(ClusterError::Removed(id.to_string()));
            }
            let name_kv = kvs_of(&read, 1).into_iter().next();
            let alive_kv = kvs_of(&read, 2).into_iter().next();
            let member_kv = kvs_of(&read, 3).into_iter().next();
            let mut count = kvs_of(&read, 4)
                .first()
                .map(parse_active)
                .unwrap_or_default();
            if let Some(kv) = &name_kv {
                let holder = String::from_utf8_lossy(kv.value()).into_owned();
                if holder != id {
                    // A holder's name key lives as long as its lease: is that still running?
                    let ttl = client
                        .lease_time_to_live(kv.lease(), None)
                        .await
                        .map_err(|e| map_err(&e))?
                        .ttl();
                    if ttl >= 1 {
                        if let Some(l) = granted {
                            let _ = Self::revoke(&mut client, l).await;
                        }
                        return Err(ClusterError::NameTaken {
                            name: node.name.clone(),
                            holder,
                        });
                    }
                    // Run out, not yet reaped by etcd: reap it now, then read again.
                    Self::revoke(&mut client, kv.lease()).await?;
                    continue;
                }
            }
            let lease = match granted {
                Some(l) => l,
                None => {
                    let l = client
                        .lease_grant(self.lease_ttl_secs(), None)
                        .await
                        .map_err(|e| map_err(&e))?
                        .id();
                    granted = Some(l);
                    l
                }
            };
            let fresh = alive_kv.is_none() && legacy_alive.is_none();
            let stored = Stored {
                node: node.clone(),
                lease,
                last_heartbeat_ms: now_ms(),
            };
            let mut ops = vec![
                TxnOp::put(
                    k_alive.clone(),
                    lease.to_string(),
                    Some(PutOptions::new().with_lease(lease)),
                ),
                TxnOp::put(
                    k_member.clone(),
                    serde_json::to_vec(&stored).unwrap_or_default(),
                    None,
                ),
                TxnOp::put(
                    k_name.clone(),
                    id,
                    Some(PutOptions::new().with_lease(lease)),
                ),
            ];
            if !self.is_node_user() {
                ops.extend(
                    legacy
                        .iter()
                        .flatten()
                        .map(|k| TxnOp::delete(k.clone(), None)),
                );
            }
            if fresh {
                ops.push(self.event_put(
                    EventKind::Joined,
                    id,
                    BTreeMap::from([("name".into(), node.name.clone())]),
                ));
                // Not compared: two joins at once may count one; the next prune recounts.
                count.n += 1;
                // A node's own user may not write the count: the primary's prune recounts.
                if !self.is_node_user() {
                    ops.push(TxnOp::put(self.key("active"), count.to_json(), None));
                }
            }
            let resp = client
                .txn(
                    Txn::new()
                        .when([
                            Compare::version(k_removed.clone(), CompareOp::Equal, 0),
                            unchanged(&k_name, name_kv.as_ref()),
                            unchanged(&k_alive, alive_kv.as_ref()),
                        ])
                        .and_then(ops),
                )
                .await
                .map_err(|e| map_err(&e))?;
            if !resp.succeeded() {
                continue;
            }
            // The keys moved to the new lease; the old one (if any) holds nothing of ours now.
            // (A node's own user may not revoke a lease that an earlier-form key is bound to:
            // that one runs out by itself.)
            let old = member_kv
                .iter()
                .chain(&legacy_member)
                .filter_map(parse_stored)
                .map(|s| s.lease)
                .chain(self.local_lease(id));
            for l in old.collect::<BTreeSet<_>>() {
                if l != lease {
                    let _ = Self::revoke(&mut client, l).await;
                }
            }
            self.set_local_lease(id, Some(lease));
            return Ok(count.n.max(1));
        }
        if let Some(l) = granted {
            let _ = Self::revoke(&mut client, l).await;
        }
        Err(backend_err(format!(
            "registration of {id} kept conflicting with other nodes' changes"
        )))
    }

    pub(super) async fn heartbeat_inner(
        &self,
        mut client: Client,
        node: &NodeRecord,
    ) -> Result<Heartbeat, ClusterError> {
        let id = node.id.as_str();
        let k_removed = self.key(&format!("removed/{id}"));
        let k_alive = self.id_key("alive", id);
        let k_member = self.id_key("members", id);
        let lease = match self.local_lease(id) {
            Some(l) => Some(l),
            None => client
                .get(k_member.clone(), None)
                .await
                .map_err(|e| map_err(&e))?
                .kvs()
                .first()
                .and_then(parse_stored)
                .map(|s| s.lease),
        };
        let kept = match lease {
            None => false,
            Some(l) => self.keep_alive(&mut client, l).await?,
        };
        let Some(lease) = lease.filter(|_| kept) else {
            self.checks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(id);
            // Nothing to renew: only the tombstone is worth a look.
            let resp = client.get(k_removed, None).await.map_err(|e| map_err(&e))?;
            return Ok(if resp.kvs().is_empty() {
                Heartbeat::NotMember
            } else {
                Heartbeat::Removed
            });
        };
        // Renewed: between checks, that is the whole heartbeat.
        {
            let mut checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = checks.get_mut(id)
                && c.lease == lease
                && c.beats_left > 0
            {
                c.beats_left -= 1;
                return Ok(Heartbeat::Alive { active: c.active });
            }
        }
        // Liveness is the lease: no write here (a write per heartbeat was a revision of history
        // each, and a disk sync). One read-only transaction checks that this node is still a
        // member, reads the stored count, and sees whether the pruner's turn is free.
        let txn = Txn::new()
            .when([
                Compare::lease(k_alive, CompareOp::Equal, lease),
                Compare::version(k_member, CompareOp::Greater, 0),
                Compare::version(k_removed.clone(), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::get(self.key("active"), None),
                TxnOp::get(
                    self.key("pruner"),
                    Some(GetOptions::new().with_count_only()),
                ),
            ])
            .or_else([TxnOp::get(k_removed, None)]);
        let resp = client.txn(txn).await.map_err(|e| map_err(&e))?;
        if !resp.succeeded() {
            self.checks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(id);
            return Ok(if kvs_of(&resp, 0).is_empty() {
                Heartbeat::NotMember
            } else {
                Heartbeat::Removed
            });
        }
        let stored = kvs_of(&resp, 0)
            .first()
            .map(parse_active)
            .unwrap_or_default();
        let mut active = stored.n.max(1);
        // Pruning deletes other nodes' keys: the primary's credential only.
        if count_of(&resp, 1) == 0
            && !self.is_node_user()
            && let Some(n) = self.prune_turn(&mut client, id).await?
        {
            active = n;
        }
        // The first check of a lease starts its count at a random beat, so that nodes that
        // started together do not check together.
        let mut checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        let beats_left = match checks.get(id) {
            Some(c) if c.lease == lease => CHECK_EVERY - 1,
            _ => rand::rng().random_range(0..CHECK_EVERY),
        };
        checks.insert(
            id.to_string(),
            Check {
                lease,
                beats_left,
                active,
            },
        );
        Ok(Heartbeat::Alive { active })
    }

    /// Claims the pruner's turn (`pruner`, on a lease of one timeout that nobody renews): of the
    /// nodes that find it free, one wins, so across the cluster the prune runs about once per
    /// timeout. The winner prunes, stores the active count, and compacts etcd's history to the
    /// revision the previous turn stored (at least one timeout old: nothing of ours reads older).
    /// `None`: another node won.
    pub(super) async fn prune_turn(
        &self,
        client: &mut Client,
        id: &str,
    ) -> Result<Option<usize>, ClusterError> {
        let k_pruner = self.key("pruner");
        let lease = client
            .lease_grant(self.lease_ttl_secs(), None)
            .await
            .map_err(|e| map_err(&e))?
            .id();
        let claim = client
            .txn(
                Txn::new()
                    .when([Compare::version(k_pruner.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        k_pruner,
                        id,
                        Some(PutOptions::new().with_lease(lease)),
                    )])
                    .or_else([]),
            )
            .await
            .map_err(|e| map_err(&e))?;
        if !claim.succeeded() {
            Self::revoke(client, lease).await?;
            return Ok(None);
        }
        Ok(Some(self.prune_and_count(client).await?))
    }

    /// Prunes, stores the active count with the current revision, and compacts to the
    /// revision stored before; returns the active count.
    pub(super) async fn prune_and_count(&self, client: &mut Client) -> Result<usize, ClusterError> {
        let k_active = self.key("active");
        let read = client
            .get(k_active.clone(), None)
            .await
            .map_err(|e| map_err(&e))?;
        let rev = read.header().map(|h| h.revision()).unwrap_or(0);
        let before = read.kvs().first().map(parse_active).unwrap_or_default();
        let (_, active) = self.prune_inner(client).await?;
        client
            .put(k_active, ActiveCount { n: active, rev }.to_json(), None)
            .await
            .map_err(|e| map_err(&e))?;
        if before.rev > 0 && before.rev < rev {
            match client.compact(before.rev, None).await {
                Ok(_) => {}
                // Compacted already (by another node, or etcd's own auto-compaction).
                Err(etcd_client::Error::GRpcStatus(s))
                    if s.message().contains("compacted") || s.message().contains("future") => {}
                Err(e) => return Err(map_err(&e)),
            }
        }
        Ok(active)
    }

    /// Prunes members without a live lease, recording `expired` for each, and trims the events;
    /// returns the pruned ids and the number of active members.
    pub(super) async fn prune_inner(
        &self,
        client: &mut Client,
    ) -> Result<(Vec<String>, usize), ClusterError> {
        let count = |sub: &str| {
            TxnOp::get(
                self.key(sub),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
        };
        let counts = client
            .txn(Txn::new().and_then([
                count("members/"),
                count("alive/"),
                count("events/"),
                count("node-events/"),
            ]))
            .await
            .map_err(|e| map_err(&e))?;
        let (members, alive, events, node_events) = (
            count_of(&counts, 0),
            count_of(&counts, 1),
            count_of(&counts, 2),
            count_of(&counts, 3),
        );
        let mut gone = Vec::new();
        // Every member has its alive key while it lives: equal counts, nothing to prune. Every
        // `FULL_PRUNE_EVERY`th turn of a process looks anyway: a node's own user can add keys
        // under its own prefixes that make the counts equal while a member is dead.
        let turn = self
            .prune_turns
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if members != alive || (turn + 1).is_multiple_of(FULL_PRUNE_EVERY) {
            let (records, live, stray) = self.member_snapshot(client).await?;
            // Keys of no form and alive keys without a record: planted, nobody's.
            if !self.is_node_user() && !stray.is_empty() {
                log::warn!(
                    "deleting {} key(s) under {} that belong to no member",
                    stray.len(),
                    self.root
                );
                delete_keys(client, &stray).await?;
            }
            for (id, kvs) in records {
                if gone.len() >= PRUNE_LIMIT {
                    break;
                }
                if live.contains_key(&id) {
                    // Registered again in this release's form: the earlier form's record is
                    // superseded (the member's own user may not delete it).
                    if kvs.len() > 1 && !self.is_node_user() {
                        self.drop_superseded(client, &kvs[1..]).await?;
                    }
                    continue;
                }
                // The name its id carries (a record's own text is the node's word).
                let name = keys::name_of_id(&id)
                    .map(str::to_string)
                    .unwrap_or_else(|| {
                        kvs.iter()
                            .find_map(parse_stored)
                            .map(|s| s.node.name)
                            .unwrap_or_default()
                    });
                let mut when: Vec<Compare> = kvs
                    .iter()
                    .map(|kv| {
                        Compare::mod_revision(
                            kv.key().to_vec(),
                            CompareOp::Equal,
                            kv.mod_revision(),
                        )
                    })
                    .collect();
                when.extend(
                    std::iter::once(self.id_key("alive", &id))
                        .chain(self.legacy_key("alive", &id))
                        .map(|k| Compare::version(k, CompareOp::Equal, 0)),
                );
                let mut ops: Vec<TxnOp> = kvs
                    .iter()
                    .map(|kv| TxnOp::delete(kv.key().to_vec(), None))
                    .collect();
                ops.push(self.event_put(
                    EventKind::Expired,
                    &id,
                    BTreeMap::from([("name".into(), name)]),
                ));
                // Only the node whose transaction deletes the record records the expiry:
                // pruning stays idempotent when several nodes prune at once.
                let resp = client
                    .txn(Txn::new().when(when).and_then(ops))
                    .await
                    .map_err(|e| map_err(&e))?;
                if resp.succeeded() {
                    gone.push(id);
                }
            }
        }
        // The nodes' own events, checked, into the shared stream (the primary's credential).
        let forwarded = if node_events > 0 && !self.is_node_user() {
            self.forward_node_events(client).await?
        } else {
            0
        };
        // Trim in batches, so the events are not listed and trimmed on every heartbeat.
        let events = events + gone.len() as i64 + forwarded as i64;
        if events as usize > EVENTS_CAP + EVENTS_CAP / 10 {
            let excess = events - EVENTS_CAP as i64;
            let oldest = client
                .get(
                    self.key("events/"),
                    Some(
                        GetOptions::new()
                            .with_prefix()
                            .with_keys_only()
                            .with_sort(SortTarget::Create, SortOrder::Ascend)
                            .with_limit(excess),
                    ),
                )
                .await
                .map_err(|e| map_err(&e))?;
            let keys: Vec<Vec<u8>> = oldest.kvs().iter().map(|kv| kv.key().to_vec()).collect();
            delete_keys(client, &keys).await?;
        }
        Ok((gone, alive.max(0) as usize))
    }

    /// Leaves (`Left`, graceful) or is removed (`Removed`, with a tombstone): returns whether it
    /// was a member.
    pub(super) async fn leave_inner(
        &self,
        mut client: Client,
        id: &str,
        kind: EventKind,
        by: &str,
    ) -> Result<bool, ClusterError> {
        // Both forms of its keys (an earlier release's too) where this credential may.
        let k_members = self.deletable_keys("members", id);
        let k_alives = self.deletable_keys("alive", id);
        let k_removed = self.key(&format!("removed/{id}"));
        let tombstone = if kind == EventKind::Removed {
            let l = client
                .lease_grant(REMOVAL_TOMBSTONE.as_secs() as i64, None)
                .await
                .map_err(|e| map_err(&e))?
                .id();
            Some(TxnOp::put(
                k_removed,
                by,
                Some(PutOptions::new().with_lease(l)),
            ))
        } else {
            None
        };
        let mut was = false;
        let mut lease = self.local_lease(id);
        for attempt in 0..=TXN_ATTEMPTS {
            if attempt == TXN_ATTEMPTS {
                return Err(backend_err(format!(
                    "leaving {id} kept conflicting with other nodes' changes"
                )));
            }
            let mut reads = vec![TxnOp::get(self.key("active"), None)];
            reads.extend(k_members.iter().map(|k| TxnOp::get(k.clone(), None)));
            reads.extend(
                k_alives
                    .iter()
                    .map(|k| TxnOp::get(k.clone(), Some(GetOptions::new().with_count_only()))),
            );
            let read = client
                .txn(Txn::new().and_then(reads))
                .await
                .map_err(|e| map_err(&e))?;
            let members: Vec<Option<KeyValue>> = (0..k_members.len())
                .map(|i| kvs_of(&read, 1 + i).into_iter().next())
                .collect();
            let alive_count: i64 = (0..k_alives.len())
                .map(|i| count_of(&read, 1 + k_members.len() + i))
                .sum();
            let Some(kv) = members.iter().flatten().next() else {
                if let Some(t) = &tombstone {
                    client
                        .txn(Txn::new().and_then([t.clone()]))
                        .await
                        .map_err(|e| map_err(&e))?;
                }
                // Not a member (any more); still drop its alive key, in case only the record
                // was lost.
                let drops = k_alives.iter().map(|k| TxnOp::delete(k.clone(), None));
                client
                    .txn(Txn::new().and_then(drops.collect::<Vec<_>>()))
                    .await
                    .map_err(|e| map_err(&e))?;
                break;
            };
            let stored = parse_stored(kv);
            let name = stored
                .as_ref()
                .map(|s| s.node.name.clone())
                .unwrap_or_default();
            lease = lease.or(stored.as_ref().map(|s| s.lease));
            let mut detail = BTreeMap::from([("name".to_string(), name.clone())]);
            if !by.is_empty() {
                detail.insert("by".into(), by.into());
            }
            let mut ops: Vec<TxnOp> = k_members
                .iter()
                .chain(&k_alives)
                .map(|k| TxnOp::delete(k.clone(), None))
                .collect();
            ops.push(self.name_release(&name, id));
            ops.push(self.event_put(kind, id, detail));
            ops.extend(tombstone.clone());
            if alive_count > 0 {
                // It counted as active: it counts no more (not compared, as in `register`).
                let mut count = kvs_of(&read, 0)
                    .first()
                    .map(parse_active)
                    .unwrap_or_default();
                count.n = count.n.saturating_sub(1);
                if !self.is_node_user() {
                    ops.push(TxnOp::put(self.key("active"), count.to_json(), None));
                }
            }
            let when: Vec<Compare> = k_members
                .iter()
                .zip(&members)
                .map(|(k, kv)| unchanged(k, kv.as_ref()))
                .collect();
            let resp = client
                .txn(Txn::new().when(when).and_then(ops))
                .await
                .map_err(|e| map_err(&e))?;
            if resp.succeeded() {
                was = true;
                break;
            }
        }
        // The lease now holds nothing of ours; revoking it ends it at once.
        if let Some(l) = lease {
            Self::revoke(&mut client, l).await?;
        }
        self.set_local_lease(id, None);
        Ok(was)
    }

    /// Every member record by id (this release's form first, an earlier release's after it)
    /// and the ids whose `alive/` key exists in either form (with their lease), read in one
    /// transaction. Keys of no form (`etcd/keys.rs`) are nobody's and left out; they and alive
    /// keys of an id without a record (registration and leave write both in one transaction,
    /// so only a node's own user planting keys under its prefix makes those) are the third part.
    #[allow(clippy::type_complexity)]
    pub(super) async fn member_snapshot(
        &self,
        client: &mut Client,
    ) -> Result<
        (
            BTreeMap<String, Vec<KeyValue>>,
            BTreeMap<String, i64>,
            Vec<Vec<u8>>,
        ),
        ClusterError,
    > {
        let lists = client
            .txn(Txn::new().and_then([
                TxnOp::get(self.key("members/"), Some(GetOptions::new().with_prefix())),
                TxnOp::get(
                    self.key("alive/"),
                    Some(GetOptions::new().with_prefix().with_keys_only()),
                ),
            ]))
            .await
            .map_err(|e| map_err(&e))?;
        let alive_prefix = self.key("alive/");
        let mut live = BTreeMap::new();
        let mut stray = Vec::new();
        let mut alive_keys = Vec::new();
        for kv in kvs_of(&lists, 1) {
            let id = kv
                .key_str()
                .ok()
                .and_then(|k| k.strip_prefix(&alive_prefix))
                .and_then(keys::id_of_key)
                .map(str::to_string);
            match id {
                Some(id) => {
                    live.insert(id.clone(), kv.lease());
                    alive_keys.push((id, kv.key().to_vec()));
                }
                None => stray.push(kv.key().to_vec()),
            }
        }
        let member_prefix = self.key("members/");
        let mut records: BTreeMap<String, Vec<KeyValue>> = BTreeMap::new();
        for kv in kvs_of(&lists, 0) {
            let Some((id, current)) = kv
                .key_str()
                .ok()
                .and_then(|k| k.strip_prefix(&member_prefix))
                .and_then(|rest| {
                    Some((
                        keys::id_of_key(rest)?.to_string(),
                        keys::is_current_form(rest),
                    ))
                })
            else {
                stray.push(kv.key().to_vec());
                continue;
            };
            let of_id = records.entry(id).or_default();
            if current {
                of_id.insert(0, kv);
            } else {
                of_id.push(kv);
            }
        }
        for (id, key) in alive_keys {
            if !records.contains_key(&id) {
                live.remove(&id);
                stray.push(key);
            }
        }
        Ok((records, live, stray))
    }

    /// The record of each id from a snapshot: the first that parses and names that id (a
    /// record naming another id is not that node's).
    fn records_of(records: &BTreeMap<String, Vec<KeyValue>>) -> Vec<Stored> {
        records
            .iter()
            .filter_map(|(id, kvs)| {
                kvs.iter()
                    .filter_map(parse_stored)
                    .find(|s| s.node.id == *id)
            })
            .collect()
    }

    /// Deletes an earlier release's records of a member that registered again (each only as
    /// it was read).
    async fn drop_superseded(
        &self,
        client: &mut Client,
        kvs: &[KeyValue],
    ) -> Result<(), ClusterError> {
        for kv in kvs {
            let key = kv.key().to_vec();
            client
                .txn(
                    Txn::new()
                        .when([Compare::mod_revision(
                            key.clone(),
                            CompareOp::Equal,
                            kv.mod_revision(),
                        )])
                        .and_then([TxnOp::delete(key, None)]),
                )
                .await
                .map_err(|e| map_err(&e))?;
        }
        Ok(())
    }

    /// Seconds since each lease was last renewed, from etcd's remaining TTL (whole seconds,
    /// rounded down by etcd, so the age is a lower bound with a resolution of one second);
    /// `None` for a lease that has run out. Asked with a few requests in flight at once.
    pub(super) async fn lease_ages(
        client: &Client,
        leases: Vec<i64>,
    ) -> Result<HashMap<i64, Option<u64>>, ClusterError> {
        const IN_FLIGHT: usize = 64;
        let mut tasks = tokio::task::JoinSet::new();
        let per = leases.len().div_ceil(IN_FLIGHT).max(1);
        for chunk in leases.chunks(per) {
            let (mut c, chunk) = (client.clone(), chunk.to_vec());
            tasks.spawn(async move {
                let mut out = Vec::with_capacity(chunk.len());
                for l in chunk {
                    let age = match c.lease_time_to_live(l, None).await {
                        Ok(r) if r.ttl() >= 0 => {
                            Some((r.granted_ttl() - r.ttl() - 1).max(0) as u64)
                        }
                        Ok(_) => None,
                        Err(etcd_client::Error::GRpcStatus(s))
                            if s.message().contains("not found") =>
                        {
                            None
                        }
                        Err(e) => return Err(map_err(&e)),
                    };
                    out.push((l, age));
                }
                Ok(out)
            });
        }
        let mut ages = HashMap::with_capacity(leases.len());
        while let Some(done) = tasks.join_next().await {
            let part = done.map_err(|e| backend_err(format!("lease lookup failed: {e}")))??;
            ages.extend(part);
        }
        Ok(ages)
    }

    /// The member list, or one page of it (`page`: limit and cursor).
    pub(super) async fn members_inner(
        &self,
        mut client: Client,
        page: Option<(usize, Option<&str>)>,
    ) -> Result<(Vec<Member>, Option<String>), ClusterError> {
        let (records, live, _) = self.member_snapshot(&mut client).await?;
        let mut stored = Self::records_of(&records);
        stored.sort_by(|a, b| {
            a.node
                .name
                .cmp(&b.node.name)
                .then(a.node.id.cmp(&b.node.id))
        });
        let mut next = None;
        if let Some((limit, cursor)) = page {
            let after = cursor.and_then(crate::cluster::parse_cursor);
            stored.retain(|s| match &after {
                Some((n, i)) => {
                    (s.node.name.as_str(), s.node.id.as_str()) > (n.as_str(), i.as_str())
                }
                None => true,
            });
            if stored.len() > limit {
                stored.truncate(limit);
                next = stored.last().map(|s| crate::cluster::cursor_of(&s.node));
            }
        }
        let leases: Vec<i64> = stored
            .iter()
            .filter_map(|s| live.get(&s.node.id).copied())
            .collect();
        // A lease's age costs one call each: a list of more active members than the budget
        // reports them active (the alive keys say so) without asking, their age unknown.
        let asked = leases.len() <= AGE_LOOKUPS;
        let ages = if asked {
            Self::lease_ages(&client, leases).await?
        } else {
            HashMap::new()
        };
        let now = now_ms();
        let timeout_ms = self.timing.timeout.as_millis() as u64;
        let out = stored
            .into_iter()
            .map(|s| {
                let lease = live.get(&s.node.id);
                let age = lease.and_then(|l| ages.get(l).copied().flatten());
                let unasked = !asked && lease.is_some();
                let (state, last) = match age {
                    Some(secs) => (MemberState::Active, now.saturating_sub(secs * 1000)),
                    None if unasked => (MemberState::Active, now),
                    // Its lease is gone, so its last renewal is at least a timeout old; not
                    // older than its registration, which the record keeps.
                    None => (
                        MemberState::Expired,
                        now.saturating_sub(timeout_ms)
                            .max(s.last_heartbeat_ms.min(now)),
                    ),
                };
                Member {
                    state,
                    last_heartbeat_ms: last,
                    age_ms: now.saturating_sub(last),
                    node: s.node,
                    age_known: !unasked,
                }
            })
            .collect();
        Ok((out, next))
    }
}

#[async_trait::async_trait]
impl Membership for EtcdMembership {
    fn kind(&self) -> BackendKind {
        BackendKind::Etcd
    }

    async fn admin_only(&self, what: &str) -> Result<(), ClusterError> {
        EtcdMembership::admin_only(self, what)
    }

    fn users(&self) -> Option<&dyn crate::cluster::BackendUsers> {
        Some(self)
    }

    async fn housekeeping(&self) -> Result<(), ClusterError> {
        self.narrow_node_roles().await
    }

    async fn register(&self, node: &NodeRecord) -> Result<usize, ClusterError> {
        self.run("register", |c| self.register_inner(c, node)).await
    }

    async fn heartbeat(&self, node: &NodeRecord) -> Result<Heartbeat, ClusterError> {
        self.run("heartbeat", |c| self.heartbeat_inner(c, node))
            .await
    }

    async fn deregister(&self, node_id: &str) -> Result<(), ClusterError> {
        // A call's deadline, and never more than the shutdown's bound on leaving.
        let deadline = (self.timing.op_timeout() * 3).min(crate::cluster::LEAVE_DEADLINE);
        let leave = self.run_within("leave", deadline, |c| {
            self.leave_inner(c, node_id, EventKind::Left, "")
        });
        leave.await.map(|_| ())
    }

    async fn remove(&self, node_id: &str, by: &str) -> Result<bool, ClusterError> {
        self.admin_only(&format!("remove {node_id}"))?;
        let by = if by.is_empty() { "admin" } else { by };
        let k_members: Vec<String> = std::iter::once(self.id_key("members", node_id))
            .chain(self.legacy_key("members", node_id))
            .collect();
        // The record names the node; without one (pruned already), the id does: `<name>-<6>`.
        let name = self
            .run("remove", |mut c| async move {
                let gets = k_members.iter().map(|k| TxnOp::get(k.clone(), None));
                let resp = c
                    .txn(Txn::new().and_then(gets.collect::<Vec<_>>()))
                    .await
                    .map_err(|e| map_err(&e))?;
                Ok((0..k_members.len())
                    .flat_map(|i| kvs_of(&resp, i))
                    .find_map(|kv| parse_stored(&kv))
                    .map(|s| s.node.name))
            })
            .await?
            .or_else(|| node_id.rsplit_once('-').map(|(n, _)| n.to_string()));
        let was = self
            .run("remove", |c| {
                self.leave_inner(c, node_id, EventKind::Removed, by)
            })
            .await?;
        if let Some(name) = name {
            self.delete_user_of(&name).await;
        }
        Ok(was)
    }

    async fn members(&self) -> Result<Vec<Member>, ClusterError> {
        self.run_within("members", LIST_DEADLINE, |c| async move {
            self.members_inner(c, None).await.map(|(m, _)| m)
        })
        .await
    }

    async fn members_page(
        &self,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<(Vec<Member>, Option<String>), ClusterError> {
        self.run_within("members", LIST_DEADLINE, |c| {
            self.members_inner(c, Some((limit, cursor)))
        })
        .await
    }

    async fn live_holders(
        &self,
        name: Option<&str>,
        ips: &[std::net::IpAddr],
    ) -> Result<crate::cluster::Holders, ClusterError> {
        // The records and the alive keys in one read; no lease lookups (ages are not needed).
        self.run_within("members", LIST_DEADLINE, |mut c| async move {
            let (records, live, _) = self.member_snapshot(&mut c).await?;
            let mut out = crate::cluster::Holders::default();
            for s in Self::records_of(&records) {
                // A record that fails validation holds no name or address.
                if !live.contains_key(&s.node.id) || s.node.validate().is_err() {
                    continue;
                }
                if out.name.is_none() && name == Some(s.node.name.as_str()) {
                    out.name = Some(s.node.id.clone());
                }
                if out.ip.is_none()
                    && let Some(ip) = ips.iter().find(|ip| {
                        s.node
                            .addresses
                            .iter()
                            .any(|a| a.parse().ok() == Some(**ip))
                    })
                {
                    out.ip = Some((*ip, s.node.id.clone()));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn active_count(&self) -> Result<usize, ClusterError> {
        self.run("active count", |mut c| async move {
            let resp = c
                .get(self.key("active"), None)
                .await
                .map_err(|e| map_err(&e))?;
            Ok(resp.kvs().first().map(parse_active).unwrap_or_default().n)
        })
        .await
    }

    async fn prune(&self) -> Result<Vec<String>, ClusterError> {
        self.run("prune", |mut c| async move {
            let (gone, active) = self.prune_inner(&mut c).await?;
            let k_active = self.key("active");
            let rev = c
                .get(k_active.clone(), None)
                .await
                .map_err(|e| map_err(&e))?
                .kvs()
                .first()
                .map(parse_active)
                .unwrap_or_default()
                .rev;
            c.put(k_active, ActiveCount { n: active, rev }.to_json(), None)
                .await
                .map_err(|e| map_err(&e))?;
            Ok(gone)
        })
        .await
    }

    async fn record_event(&self, event: &Event) -> Result<(), ClusterError> {
        // A node's own user reports about itself only what the pruner's turn forwards
        // (`etcd/events.rs`); anything else it could only leave to be dropped.
        if let Some(own) = self.own_name()
            && events::checked(
                own,
                &serde_json::to_vec(event).unwrap_or_default(),
                u64::MAX,
            )
            .is_err()
        {
            return Err(ClusterError::Auth {
                backend: NAME,
                reason: format!(
                    "a node's own etcd user records only its own joins, leaves and enrollment, not {} about {}",
                    event.kind.as_str(),
                    event.node_id
                ),
            });
        }
        self.run("event", |mut c| async move {
            let op = self.event_put(event.kind, &event.node_id, event.detail.clone());
            c.txn(Txn::new().and_then([op]))
                .await
                .map_err(|e| map_err(&e))?;
            Ok(())
        })
        .await
    }

    async fn events(&self, limit: usize) -> Result<Vec<Event>, ClusterError> {
        self.run("events", |mut c| async move {
            let resp = c
                .get(
                    self.key("events/"),
                    Some(
                        GetOptions::new()
                            .with_prefix()
                            .with_sort(SortTarget::Create, SortOrder::Descend)
                            .with_limit(limit as i64),
                    ),
                )
                .await
                .map_err(|e| map_err(&e))?;
            Ok(resp
                .kvs()
                .iter()
                .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
                .collect())
        })
        .await
    }
}
