//! (stand-in until the emulator lands)
#[derive(Clone, Debug, Default)]
pub struct EmulatorOptions;
pub struct Emulator;
impl Emulator {
    pub async fn start(_: EmulatorOptions) -> std::io::Result<Emulator> {
        Err(std::io::Error::other("the emulator is not built in yet"))
    }
    pub fn url(&self) -> String {
        String::new()
    }
    pub fn state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}
