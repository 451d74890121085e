//! Tests of the MQTT adapter's PUBACK matching, resends after a reconnect and withdrawn requests.

use super::*;

type Outcome = oneshot::Receiver<Result<PubAckReason, MessagingError>>;

fn waiters(acks: &mut Acks, n: usize) -> Vec<Outcome> {
    (0..n)
        .map(|_| {
            let (tx, rx) = oneshot::channel();
            acks.enqueue(tx);
            rx
        })
        .collect()
}

fn settle(acks: &mut Acks, pkid: u16) {
    let waiter = acks.acked(pkid).expect("a waiter for this id");
    waiter.send(Ok(PubAckReason::Success)).unwrap();
}

#[test]
fn pubacks_settle_the_publishes_in_sending_order() {
    let mut acks = Acks::default();
    let mut rx = waiters(&mut acks, 2);
    acks.sent(1);
    acks.sent(2);
    settle(&mut acks, 2);
    assert!(rx[1].try_recv().is_ok());
    assert!(rx[0].try_recv().is_err());
    settle(&mut acks, 1);
    assert!(rx[0].try_recv().is_ok());
    assert!(acks.acked(1).is_none());
    assert!(acks.inflight.is_empty() && acks.queued.is_empty());
}

#[test]
fn a_collided_id_settles_the_older_publish_first() {
    let mut acks = Acks::default();
    let mut rx = waiters(&mut acks, 2);
    acks.sent(1);
    // rumqttc reports the collided publish going out under id 1 before
    // it hands out the PUBACK for the first one.
    acks.sent(1);
    settle(&mut acks, 1);
    assert!(rx[0].try_recv().is_ok());
    assert!(rx[1].try_recv().is_err());
    settle(&mut acks, 1);
    assert!(rx[1].try_recv().is_ok());
}

#[test]
fn reconnects_resend_and_refuse() {
    let mut acks = Acks::default();
    let mut rx = waiters(&mut acks, 3);
    acks.sent(1);
    acks.sent(2);
    // Reconnected: 1 is sent again, 2 was refused (its PUBACK was an
    // error), and the third request had not been sent yet.
    let refused = acks.reconnected(HashSet::from([1]));
    assert_eq!(refused.len(), 1);
    for waiter in refused {
        waiter
            .send(Err(MessagingError::Unavailable("refused".into())))
            .unwrap();
    }
    assert!(matches!(
        rx[1].try_recv(),
        Ok(Err(MessagingError::Unavailable(_)))
    ));
    acks.sent(1);
    acks.sent(3);
    settle(&mut acks, 3);
    assert!(rx[2].try_recv().is_ok());
    settle(&mut acks, 1);
    assert!(rx[0].try_recv().is_ok());
}

#[test]
fn an_unsent_request_is_withdrawn() {
    let mut acks = Acks::default();
    let mut rx = waiters(&mut acks, 2);
    assert!(acks.withdraw_last().is_some());
    acks.sent(4);
    settle(&mut acks, 4);
    assert!(rx[0].try_recv().is_ok());
    assert!(acks.unsent().is_none());
}

#[test]
fn resent_ids_come_from_pending_qos1_publishes() {
    let publish = |pkid| {
        Request::Publish(Publish {
            pkid,
            qos: if pkid == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            },
            ..Default::default()
        })
    };
    let pending = VecDeque::from([publish(3), publish(0), Request::PingReq, publish(7)]);
    assert_eq!(resent(&pending), HashSet::from([3, 7]));
}
