/* Minimal Cortex-M7 start-up for QEMU's mps2-an500: vector table, SysTick wrap counter,
 * semihosting set-up (newlib's rdimon), then main; its return value is the exit status. */
#include <stdint.h>
#include <stdlib.h>

extern uint32_t _estack, __bss_start__, __bss_end__;
extern void initialise_monitor_handles(void);
int main(void);

volatile uint32_t systick_wraps;

void Reset_Handler(void) {
    for (uint32_t *p = &__bss_start__; p < &__bss_end__; p++) *p = 0;
    initialise_monitor_handles();
    exit(main());
}

void SysTick_Handler(void) { systick_wraps++; }

void Default_Handler(void) {
    for (;;) {
    }
}

__attribute__((section(".vectors"), used)) const void *const vectors[16] = {
    &_estack,        Reset_Handler,   Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, Default_Handler, 0,
    0,               0,               0,               Default_Handler,
    Default_Handler, 0,               Default_Handler, SysTick_Handler,
};

/* newlib's exit() runs the fini array through _fini; nothing to do here. */
void _init(void) {}
void _fini(void) {}
