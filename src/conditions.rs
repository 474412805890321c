//! A2I HumanLoopActivationConditions: parsing and evaluation on a response.
