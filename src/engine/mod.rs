//! The data plane: one worker that moves frames between the parent's ring and the ports' TAPs.
