//! Ctrl-C and SIGTERM end runs cleanly: workers finish their burst, pools report, and
//! the demo and bench remove their networks.

use anyhow::Result;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

/// Sets `stop` on Ctrl-C or SIGTERM (once), inside a tokio runtime.
pub async fn stop_on_signal(stop: Arc<AtomicBool>) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let sigterm = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm => {}
    }
    eprintln!("\nstopping ...");
    stop.store(true, Relaxed);
}

/// Sets `stop` on Ctrl-C or SIGTERM, from a thread of its own: for commands that run
/// without a tokio runtime of their own. The handlers are in place when this returns,
/// so a signal that comes at once (during the demo's network set-up, say) is not the
/// default action that kills the process and leaves its namespaces behind.
pub fn stop_on_signal_thread(stop: Arc<AtomicBool>) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut interrupt, mut terminate) = rt.block_on(async {
        Ok::<_, std::io::Error>((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ))
    })?;
    std::thread::spawn(move || {
        rt.block_on(async {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        });
        eprintln!("\nstopping ...");
        stop.store(true, Relaxed);
    });
    Ok(())
}
