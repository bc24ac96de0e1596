//! Machines in the simulation: [`NodeMachine`] (a tracker or a peer, both the core's own types)
//! and the actix driver [`run_actix`], which runs each machine in an actor on tokio's paused
//! clock.
//!
//! The actix driver takes the same [`Step`]s from the same [`World`] as the event-queue driver:
//! it waits on the paused clock until the step's virtual time, sends the input to the node's
//! actor, and awaits the drained outputs before the next step. Awaiting each step keeps the
//! order of inputs exactly that of the queue (an actor mailbox would otherwise interleave), so
//! both drivers give the same trace; the clock only paces. The virtual `now` handed to the
//! machine is the world's (microseconds), not the clock's (which rounds timers to 1 ms).

use std::io::Write;

use actix::{Actor, Addr, Context, Handler, Message, MessageResult};
use p2p_core::{Command, CommandError, Input, Machine, Output, Peer, Time, Tracker};

use crate::report::Outcome;
use crate::scenario::Scenario;
use crate::world::{Step, World};

/// A tracker or a peer: the core's state machines, unchanged.
#[derive(Debug)]
pub enum NodeMachine {
    /// The tracker.
    Tracker(Box<Tracker>),
    /// A peer.
    Peer(Box<Peer>),
}

impl Machine for NodeMachine {
    fn handle(&mut self, now: Time, input: Input) {
        match self {
            NodeMachine::Tracker(m) => m.handle(now, input),
            NodeMachine::Peer(m) => m.handle(now, input),
        }
    }

    fn command(&mut self, now: Time, command: Command) -> Result<(), CommandError> {
        match self {
            NodeMachine::Tracker(m) => m.command(now, command),
            NodeMachine::Peer(m) => m.command(now, command),
        }
    }

    fn poll_output(&mut self) -> Option<Output> {
        match self {
            NodeMachine::Tracker(m) => m.poll_output(),
            NodeMachine::Peer(m) => m.poll_output(),
        }
    }

    fn poll_timeout(&self) -> Option<Time> {
        match self {
            NodeMachine::Tracker(m) => m.poll_timeout(),
            NodeMachine::Peer(m) => m.poll_timeout(),
        }
    }
}

/// The actor around one machine.
struct NodeActor {
    machine: NodeMachine,
}

impl Actor for NodeActor {
    type Context = Context<Self>;
}

/// One input at a virtual time; answered with the drained outputs and the next timeout.
struct StepMsg {
    now: Time,
    input: Input,
}

impl Message for StepMsg {
    type Result = (Vec<Output>, Option<Time>);
}

impl Handler<StepMsg> for NodeActor {
    type Result = MessageResult<StepMsg>;

    fn handle(&mut self, step: StepMsg, _: &mut Context<Self>) -> Self::Result {
        let mut outputs = Vec::new();
        let timeout = p2p_core::step(&mut self.machine, step.now, step.input, |output| outputs.push(output));
        MessageResult((outputs, timeout))
    }
}

/// One local command at a virtual time; answered like [`StepMsg`], with the refusal if any.
struct CommandMsg {
    now: Time,
    command: Command,
}

impl Message for CommandMsg {
    type Result = (Vec<Output>, Option<Time>, Option<CommandError>);
}

impl Handler<CommandMsg> for NodeActor {
    type Result = MessageResult<CommandMsg>;

    fn handle(&mut self, msg: CommandMsg, _: &mut Context<Self>) -> Self::Result {
        let mut outputs = Vec::new();
        let (timeout, refused) = step_command(&mut self.machine, msg.now, msg.command, &mut outputs);
        MessageResult((outputs, timeout, refused))
    }
}

/// [`p2p_core::step_command`] for both drivers: the machine's next timeout (unchanged by a
/// refused command) and the refusal, if any.
pub fn step_command(
    machine: &mut NodeMachine,
    now: Time,
    command: Command,
    outputs: &mut Vec<Output>,
) -> (Option<Time>, Option<CommandError>) {
    match p2p_core::step_command(machine, now, command, |output| outputs.push(output)) {
        Ok(timeout) => (timeout, None),
        Err(refused) => (machine.poll_timeout(), Some(refused)),
    }
}

/// Runs `scenario` with `seed` on the actix driver: a current-thread actix system whose tokio
/// clock is paused (virtual). Fails only when the runtime cannot be built.
pub fn run_actix(
    scenario: &Scenario,
    seed: u64,
    trace: Option<Box<dyn Write>>,
) -> std::io::Result<(Outcome, Option<std::io::Error>)> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?;
    let system = actix::System::with_tokio_rt(|| runtime);
    let world = World::new(scenario, seed, trace);
    Ok(system.block_on(drive(world)))
}

async fn drive(mut world: World) -> (Outcome, Option<std::io::Error>) {
    let start = tokio::time::Instant::now();
    let mut actors: Vec<Option<Addr<NodeActor>>> = Vec::new();
    while let Some((now, step)) = world.next_step() {
        let due = start + now.elapsed();
        if tokio::time::Instant::now() < due {
            tokio::time::sleep_until(due).await;
        }
        match step {
            Step::Spawn(node, machine) => {
                if actors.len() <= node.0 {
                    actors.resize(node.0 + 1, None);
                }
                actors[node.0] = Some(NodeActor { machine }.start());
            }
            Step::Kill(node) => {
                // Dropping the last address stops the actor once its mailbox is empty.
                actors.get_mut(node.0).and_then(Option::take);
            }
            Step::Input(node, input) => {
                let Some(Some(actor)) = actors.get(node.0) else {
                    continue;
                };
                match actor.send(StepMsg { now, input }).await {
                    Ok((mut outputs, timeout)) => world.after_step(node, &mut outputs, timeout),
                    // The actor is alive while its address is held; a closed mailbox would be a
                    // bug in this driver, so the machine is treated as having output nothing.
                    Err(_) => world.after_step(node, &mut Vec::new(), None),
                }
            }
            Step::Command(node, command) => {
                let Some(Some(actor)) = actors.get(node.0) else {
                    continue;
                };
                match actor.send(CommandMsg { now, command: *command }).await {
                    Ok((mut outputs, timeout, refused)) => world.after_command(node, &mut outputs, timeout, refused),
                    Err(_) => world.after_step(node, &mut Vec::new(), None),
                }
            }
        }
    }
    world.finish()
}
